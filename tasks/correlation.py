"""Alerts into incidents, and the likely root cause of each incident. Pure logic, no Prefect.

The engine is incremental. Each alert is compared only with the incidents active around its start
time that it could relate to, found through indexes by topology service, alert name and label
value, so the cost of one alert does not grow with the number of alerts seen before; nothing is
rescanned and nothing is refitted.

An alert joins the related incident it is most confidently related to, or opens a new one:

- causal: a configured rule says one alert name causes the other (either way round), for alerts
  about the same place: one service, neighbours in the topology, or alerts without a service;
- same-service: the incident already has an alert on the alert's service;
- dependency: one service depends on the other within `dependency_hops` of the topology, and the
  incident's alert on it started within the window (so a long incident does not snowball);
- similar: the incident shares a label value with the alert (service, instance, model...), and
  the cosine similarity of their hashed label and annotation tokens (scikit-learn's
  HashingVectorizer: stateless, so there is nothing to fit) reaches the threshold.

A relation that makes the alert a cause (its service is a dependency of the incident's, or a rule
makes its name the cause of theirs) holds only for incident alerts the incident does not already
explain by an earlier alert on one of their dependencies: a second fault under the same callers is a
second incident (explaining away; see `Correlator._explained`).

Every relation is gated by the temporal window (the alert starts within `window` of the incident's
alerts) and its confidence decays with the gap: base x (1 - gap / (2 x window)). Time alone never
groups alerts: that is what makes a storm of unrelated alerts one useless incident. A resolved
incident takes no alert that starts more than `quiet_period` after it resolved.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

from sklearn.feature_extraction.text import HashingVectorizer

from watchkeeper.config import Correlation, Topology, WatchkeeperConfig

BASE_CONFIDENCE = {"causal": 0.95, "same-service": 0.9, "dependency": 0.8}
# A token shared by more active incidents than this says nothing about which one an alert belongs to.
MAX_TOKEN_POSTINGS = 64
# Labels that describe routing rather than the problem: not used to find similar incidents.
ROUTING_LABELS = frozenset({"alertname", "severity", "team", "job", "receiver", "prometheus"})
# Labels naming what is monitored: two alerts that name different ones are not "similar", however
# alike the rest of their labels (the same rule firing for two models is two problems).
IDENTITY_LABELS = ("model_name", "dataset_name", "pipeline_name", "feature_store")
_WORD = re.compile(r"[a-z][a-z_]{2,}")
_VECTORIZER = HashingVectorizer(
    n_features=2**18, analyzer=lambda tokens: tokens, alternate_sign=False, norm="l2"
)


@dataclass(frozen=True)
class AlertEvent:
    """What the engine needs to know of one alert. `strength` is how anomalous it is (> 0)."""

    id: int
    name: str
    service: str | None
    starts_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    strength: float = 1.0
    # When measured: how far the alert's metric moved from normal in its harmful direction, in the
    # metric's own unit, and the requests its subject served meanwhile (see `accounts_for`).
    change: float | None = None
    traffic: float | None = None

    @property
    def subject(self) -> str:
        """The candidate root cause this alert points at: its service, or the alert itself."""
        return self.service if self.service is not None else f"alert:{self.name}"


@dataclass(frozen=True)
class Membership:
    """Why an alert is in an incident, and how sure the engine is."""

    incident_id: int
    opened: bool
    reason: str
    confidence: float
    detail: str


@dataclass
class IncidentState:
    id: int
    first_at: datetime
    last_at: datetime
    resolved_at: datetime | None = None
    members: list[AlertEvent] = field(default_factory=list)
    service_first: dict[str, datetime] = field(default_factory=dict)
    service_last: dict[str, datetime] = field(default_factory=dict)
    name_services: dict[str, set[str | None]] = field(default_factory=dict)
    vector: dict[int, float] = field(default_factory=dict)
    norm_sq: float = 0.0
    identities: dict[str, set[str]] = field(default_factory=dict)

    def names_another(self, alert: AlertEvent) -> bool:
        """Whether the alert names a model, dataset, pipeline or feature store none of whose kind in
        the incident is."""
        return any(
            key in self.identities and alert.labels[key] not in self.identities[key]
            for key in IDENTITY_LABELS
            if key in alert.labels
        )

    def accepts_at(self, at: datetime, window: timedelta, quiet: timedelta) -> bool:
        if self.resolved_at is not None and at > self.resolved_at + quiet:
            return False
        return self.first_at - window <= at <= self.last_at + window

    def gap(self, at: datetime) -> timedelta:
        if at < self.first_at:
            return self.first_at - at
        return max(at - self.last_at, timedelta(0))


class CorrelationRules:
    """The configured topology and causal rules, with the lookups the engine repeats precomputed."""

    def __init__(self, topology: Topology, correlation: Correlation) -> None:
        self.window = correlation.window
        self.quiet_period = correlation.quiet_period
        self.similarity_threshold = correlation.similarity_threshold
        self.hops = correlation.dependency_hops
        self.dependencies = {s: tuple(deps) for s, deps in topology.dependencies().items()}
        dependents: dict[str, list[str]] = defaultdict(list)
        for service, deps in self.dependencies.items():
            for dep in deps:
                dependents[dep].append(service)
        self.dependents = {s: tuple(d) for s, d in dependents.items()}
        related: dict[str, set[str]] = defaultdict(set)
        for cause, effects in correlation.causal_rules.items():
            for effect in effects:
                related[cause].add(effect)
                related[effect].add(cause)
        self.causal_related = {name: frozenset(names) for name, names in related.items()}
        self.causes = {cause: frozenset(effects) for cause, effects in correlation.causal_rules.items()}
        self.reachable = cache(self._reachable)
        self.within_hops = cache(self._within_hops)

    @classmethod
    def from_config(cls, config: WatchkeeperConfig) -> CorrelationRules:
        return cls(config.topology, config.correlation)

    def _walk(self, start: str, edges: Mapping[str, tuple[str, ...]], hops: int | None) -> frozenset[str]:
        return frozenset(distances(start, (edges,), hops)) - {start}

    def _reachable(self, service: str) -> frozenset[str]:
        """Every service this one depends on, directly or not."""
        return self._walk(service, self.dependencies, None)

    def _within_hops(self, service: str) -> frozenset[str]:
        """Services within `hops` of this one, in either direction along the topology."""
        return self._walk(service, self.dependencies, self.hops) | self._walk(
            service, self.dependents, self.hops
        )

    def causes_effect(self, cause: str, effect: str) -> bool:
        return effect in self.causes.get(cause, ())


def distances(
    start: str, edges: Sequence[Mapping[str, Sequence[str]]], hops: int | None = None
) -> dict[str, int]:
    """Hops from `start` to every service reached along any of the edge maps (breadth first), up to
    `hops` when given; `start` itself is at 0."""
    found = {start: 0}
    frontier, depth = [start], 0
    while frontier and (hops is None or depth < hops):
        depth += 1
        reached = []
        for node in frontier:
            for edge_map in edges:
                for neighbour in edge_map.get(node, ()):
                    if neighbour not in found:
                        found[neighbour] = depth
                        reached.append(neighbour)
        frontier = reached
    return found


def alert_tokens(alert: AlertEvent) -> list[str]:
    """The alert's labels as key=value tokens, and the words of its annotations."""
    tokens = [f"{key}={value}" for key, value in sorted(alert.labels.items())]
    for text in alert.annotations.values():
        tokens.extend(f"~{word}" for word in _WORD.findall(text.lower()))
    return tokens


def label_vectors(alerts: Sequence[AlertEvent]) -> list[dict[int, float]]:
    """L2-normalised hashed token vectors, one per alert, from one vectoriser call for the batch."""
    if not alerts:
        return []
    matrix = _VECTORIZER.transform([alert_tokens(a) for a in alerts]).tocsr()
    return [
        dict(zip(matrix.indices[start:end].tolist(), matrix.data[start:end].tolist(), strict=True))
        for start, end in zip(matrix.indptr[:-1], matrix.indptr[1:], strict=True)
    ]


def cosine(vector: Mapping[int, float], incident: IncidentState) -> float:
    """Cosine similarity of a normalised alert vector and the sum of an incident's alert vectors."""
    if incident.norm_sq <= 0:
        return 0.0
    dot = sum(value * incident.vector.get(index, 0.0) for index, value in vector.items())
    return dot / math.sqrt(incident.norm_sq)


class Correlator:
    """The incidents active around the alerts being correlated, with indexes to find candidates."""

    def __init__(
        self,
        rules: CorrelationRules,
        incidents: Iterable[IncidentState] = (),
        new_incident_id: Callable[[AlertEvent], int] | None = None,
    ) -> None:
        self.rules = rules
        self.incidents: dict[int, IncidentState] = {}
        self.by_service: dict[str, set[int]] = defaultdict(set)
        self.by_name: dict[str, set[int]] = defaultdict(set)
        self.by_token: dict[str, set[int]] = defaultdict(set)
        self.next_id = 1
        self._new_incident_id = new_incident_id or self._count
        self._added = 0
        loaded = [(incident, incident.members) for incident in incidents]
        vectors = iter(label_vectors([m for _, members in loaded for m in members]))
        for incident, members in loaded:
            incident.members = []
            self.incidents[incident.id] = incident
            for member in members:
                self._attach(incident, member, next(vectors))
            self.next_id = max(self.next_id, incident.id + 1)

    def _count(self, _alert: AlertEvent) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add(self, alert: AlertEvent, vector: dict[int, float]) -> Membership:
        best: tuple[float, str, str, IncidentState] | None = None
        for incident, shares_label in self._candidates(alert):
            relation = self._relation(alert, vector, incident, shares_label)
            if relation is not None and (best is None or relation[0] > best[0]):
                best = (*relation, incident)
        if best is None:
            incident = IncidentState(self._new_incident_id(alert), alert.starts_at, alert.starts_at)
            self.incidents[incident.id] = incident
            membership = Membership(incident.id, True, "opened", 1.0, f"first alert: {alert.name}")
        else:
            confidence, reason, detail, incident = best
            membership = Membership(incident.id, False, reason, round(confidence, 3), detail)
        self._attach(incident, alert, vector)
        self._added += 1
        if self._added % 1024 == 0:
            self._forget_before(alert.starts_at)
        return membership

    def _index(self, incident_id: int, alert: AlertEvent) -> None:
        if alert.service is not None:
            self.by_service[alert.service].add(incident_id)
        self.by_name[alert.name].add(incident_id)
        for key, value in alert.labels.items():
            if key not in ROUTING_LABELS:
                self.by_token[f"{key}={value}"].add(incident_id)

    def add_all(self, alerts: Sequence[AlertEvent]) -> list[Membership]:
        return [self.add(a, v) for a, v in zip(alerts, label_vectors(alerts), strict=True)]

    def _attach(self, incident: IncidentState, alert: AlertEvent, vector: dict[int, float]) -> None:
        incident.members.append(alert)
        incident.first_at = min(incident.first_at, alert.starts_at)
        incident.last_at = max(incident.last_at, alert.starts_at)
        if alert.service is not None:
            incident.service_first[alert.service] = min(
                incident.service_first.get(alert.service, alert.starts_at), alert.starts_at
            )
            incident.service_last[alert.service] = max(
                incident.service_last.get(alert.service, alert.starts_at), alert.starts_at
            )
        incident.name_services.setdefault(alert.name, set()).add(alert.service)
        for key in IDENTITY_LABELS:
            if key in alert.labels:
                incident.identities.setdefault(key, set()).add(alert.labels[key])
        for index, value in vector.items():
            old = incident.vector.get(index, 0.0)
            incident.vector[index] = old + value
            incident.norm_sq += (old + value) ** 2 - old**2
        self._index(incident.id, alert)

    def _candidates(self, alert: AlertEvent) -> list[tuple[IncidentState, bool]]:
        """Active incidents the alert could relate to, each with whether it shares a label value."""
        ids: set[int] = set()
        if alert.service is not None:
            ids.update(self.by_service.get(alert.service, ()))
            for service in self.rules.within_hops(alert.service):
                ids.update(self.by_service.get(service, ()))
        for name in self.rules.causal_related.get(alert.name, ()):
            ids.update(self.by_name.get(name, ()))
        sharing: set[int] = set()
        for key, value in alert.labels.items():
            postings = self.by_token.get(f"{key}={value}", ())
            if key not in ROUTING_LABELS and len(postings) <= MAX_TOKEN_POSTINGS:
                sharing.update(postings)
        rules = self.rules
        return [
            (incident, incident.id in sharing)
            for incident in (self.incidents[i] for i in ids | sharing if i in self.incidents)
            if incident.accepts_at(alert.starts_at, rules.window, rules.quiet_period)
        ]

    def _near(self, service: str | None, others: Iterable[str | None]) -> bool:
        """Whether two alerts are about the same place: one service, neighbours, or no service at all."""
        if service is None:
            return True
        near = self.rules.within_hops(service)
        return any(other is None or other == service or other in near for other in others)

    def _relation(
        self, alert: AlertEvent, vector: Mapping[int, float], incident: IncidentState, shares_label: bool
    ) -> tuple[float, str, str] | None:
        """The strongest relation between the alert and the incident: (confidence, reason, detail).

        A causal rule links alert names only where the alerts are about the same place (see `_near`);
        similarity counts only for an incident that shares a label value with the alert and does not
        name a different model, dataset or pipeline (the same rule firing for two models at once)."""
        rules = self.rules
        found: list[tuple[float, str, str]] = []
        for name in rules.causal_related.get(alert.name, frozenset()) & incident.name_services.keys():
            forward = rules.causes_effect(name, alert.name)
            partners = incident.name_services[name]
            if not forward:
                at = alert.starts_at
                partners = {s for s in partners if s is None or not self._explained(incident, s, at)}
            if self._near(alert.service, partners):
                cause, effect = (name, alert.name) if forward else (alert.name, name)
                found.append((BASE_CONFIDENCE["causal"], "causal", f"{cause} is a known cause of {effect}"))
                break
        if alert.service is not None:
            if alert.service in incident.service_last:
                found.append(
                    (BASE_CONFIDENCE["same-service"], "same-service", f"another alert on {alert.service}")
                )
            else:
                dependency = self._dependency(alert.service, alert.starts_at, incident)
                if dependency is not None:
                    found.append((BASE_CONFIDENCE["dependency"], "dependency", dependency))
        if shares_label and not incident.names_another(alert):
            similarity = cosine(vector, incident)
            if similarity >= rules.similarity_threshold:
                found.append(
                    (0.7 * similarity, "similar", f"labels and annotations {similarity:.2f} similar")
                )
        if not found:
            return None
        base, reason, detail = max(found)
        decay = 1 - incident.gap(alert.starts_at) / (2 * rules.window)
        return base * decay, reason, detail

    def _dependency(self, service: str, at: datetime, incident: IncidentState) -> str | None:
        """How the service relates through the topology to one of the incident's services that alerted
        within the window, if it does: as an effect (it depends on that service), or as the cause of
        alerts the incident does not yet explain (see `_explained`)."""
        rules = self.rules
        near = sorted(
            other
            for other in rules.within_hops(service) & incident.service_last.keys()
            if abs(incident.service_last[other] - at) <= rules.window
        )
        below = rules.reachable(service)
        effect_of = [other for other in near if other in below]
        if effect_of:
            return f"{service} depends on {effect_of[0]}"
        cause_of = [other for other in near if not self._explained(incident, other, at)]
        return f"{service} is a dependency of {cause_of[0]}" if cause_of else None

    def _explained(self, incident: IncidentState, service: str, at: datetime) -> bool:
        """Whether an alert starting at `at` comes too late to be the cause of the service's alerts:
        it starts after them, and the incident already has an alert on one of the service's
        dependencies that started no later than they did.

        Explaining away: a fault's origin alerts no later than its callers. An alert on another
        dependency of callers that already have their cause, starting after them, is a second fault,
        not a second root of the first; joining it would merge two incidents (and their playbooks).
        """
        first = incident.service_first[service]
        return at > first and any(
            incident.service_first[dependency] <= first
            for dependency in self.rules.reachable(service) & incident.service_first.keys()
        )

    def _forget_before(self, now: datetime) -> None:
        """Drop incidents no later alert can join, so memory follows the active set only."""
        horizon = now - self.rules.window - self.rules.quiet_period
        stale = [i for i, inc in self.incidents.items() if inc.last_at < horizon]
        for incident_id in stale:
            del self.incidents[incident_id]
        if stale:
            stale_set = set(stale)
            for index in (self.by_service, self.by_name, self.by_token):
                for key in list(index):
                    index[key] -= stale_set
                    if not index[key]:
                        del index[key]


@dataclass(frozen=True)
class RootCauseCandidate:
    subject: str
    alert_id: int
    alertname: str
    score: float
    reasons: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "alert_id": self.alert_id,
            "alertname": self.alertname,
            "score": self.score,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class RankingWeights:
    """How much each kind of evidence counts; they sum to 1 so a score lies in [0, 1]."""

    explains: float = 0.35
    strength: float = 0.25
    deepest: float = 0.25
    onset: float = 0.15
    # A dependency at least this share as anomalous as a candidate could be the cause instead.
    dominance: float = 0.5


def rank_root_causes(
    members: Sequence[AlertEvent],
    rules: CorrelationRules,
    weights: RankingWeights = RankingWeights(),
) -> list[RootCauseCandidate]:
    """Rank an incident's subjects (services, or alerts without one) as its root cause, best first.

    A good root cause explains the others (they depend on it in the topology, or a causal rule makes
    its alert the cause of theirs), has no anomalous dependency that explains it in turn (the
    deepest anomalous dependency: one whose measured change accounts for it, or without
    measurements, one at least `dominance` as anomalous), starts first, and is the most anomalous.
    """
    by_subject: dict[str, list[AlertEvent]] = defaultdict(list)
    for alert in members:
        by_subject[alert.subject].append(alert)
    subjects = list(by_subject)
    strength = {s: max(a.strength for a in alerts) for s, alerts in by_subject.items()}
    onset = {s: min(a.starts_at for a in alerts) for s, alerts in by_subject.items()}
    names = {s: {a.name for a in alerts} for s, alerts in by_subject.items()}
    onsets = sorted(set(onset.values()))
    top_strength = math.log1p(max(strength.values()))
    others_count = max(len(subjects) - 1, 1)
    explains = {s: _explained_by(s, by_subject, names, rules) for s in subjects}
    ranked = []
    for subject in subjects:
        reasons = []
        explained = explains[subject]
        if explained:
            listed = ", ".join(sorted(explained)[:5])
            reasons.append(f"explains {len(explained)} of {others_count} others: {listed}")
        explainers = [
            other
            for other in subjects
            if subject in explains[other]
            and (
                _measured_alike(by_subject[other], by_subject[subject])
                or strength[other] >= weights.dominance * strength[subject]
            )
        ]
        if explainers:
            reasons.append(f"could itself be explained by {', '.join(sorted(explainers)[:3])}")
        else:
            reasons.append("no anomalous dependency explains it")
        onset_rank = onsets.index(onset[subject])
        onset_score = 1.0 if len(onsets) == 1 else 1 - onset_rank / (len(onsets) - 1)
        if onset_rank == 0 and len(subjects) > 1:
            reasons.append("started first")
        strength_score = math.log1p(strength[subject]) / top_strength if top_strength > 0 else 1.0
        reasons.append(f"anomaly strength {strength[subject]:.3g}")
        score = (
            weights.explains * len(explained) / others_count
            + weights.strength * strength_score
            + weights.deepest * (not explainers)
            + weights.onset * onset_score
        )
        lead = _lead_alert(by_subject[subject], rules)
        ranked.append(RootCauseCandidate(subject, lead.id, lead.name, round(score, 4), tuple(reasons)))
    ranked.sort(key=lambda c: (-c.score, onset[c.subject], c.subject))
    return ranked


def _lead_alert(alerts: Sequence[AlertEvent], rules: CorrelationRules) -> AlertEvent:
    """The alert that stands for its subject, and so selects the incident's playbook: the most severe
    (strongest), then the one a causal rule makes the cause of more of the others, then the earliest.

    Severity first: an incident opened by a critical accuracy alert stays an accuracy incident when
    latency and error warnings join it later on the same service. Causes before onset: on one
    service an effect can be seen first (a model's business value falls as soon as its traffic does,
    its labels thinning out, seconds before the throughput alert's `for` ends), and the cause is
    what the playbook should answer.
    """
    names = {a.name for a in alerts}
    return min(
        alerts,
        key=lambda a: (
            -a.strength,
            -sum(rules.causes_effect(a.name, other) for other in names),
            a.starts_at,
            a.id,
        ),
    )


def _explained_by(
    subject: str,
    by_subject: Mapping[str, Sequence[AlertEvent]],
    names: Mapping[str, set[str]],
    rules: CorrelationRules,
) -> set[str]:
    """The other subjects this one explains: its alerts cause theirs by a causal rule, or they reach it
    through the topology along a path of anomalous subjects (a fault propagates through callers that
    show it; a healthy service in between breaks the chain) where each step's measured change, when
    there is one, accounts for the caller's (`accounts_for`)."""
    members = set(by_subject)
    explained = {
        other
        for other in members - {subject}
        if any(rules.causes_effect(c, e) for c in names[subject] for e in names[other])
    }
    frontier = [subject]
    while frontier:
        frontier = [
            caller
            for service in frontier
            for caller in rules.dependents.get(service, ())
            if caller in members
            and caller != subject
            and caller not in explained
            and accounts_for(by_subject[service], by_subject[caller]) is not False
        ]
        explained.update(frontier)
    return explained


# A dependency accounts for its caller's change when it could produce at least this share of it:
# the larger part, so that of two dependencies at most one is the main cause.
ACCOUNTED_SHARE = 0.5


def accounts_for(dependency: Sequence[AlertEvent], caller: Sequence[AlertEvent]) -> bool | None:
    """Whether a dependency's measured change could produce its caller's, on a metric both alerts
    measure (the same alert name); None when there is nothing to compare.

    Latency adds up along synchronous calls, and a failed call fails the request that made it, so a
    caller's average moves by at most the dependency's change times the dependency's calls per
    caller request (its requests over the caller's; an upper bound when it has other callers). A
    slow database under a service that slowed down by far more did not cause the slowdown.
    """
    verdicts = [
        cause.change * _calls_per_request(cause, effect) >= ACCOUNTED_SHARE * effect.change
        for effect in caller
        for cause in dependency
        if cause.name == effect.name and cause.change is not None and effect.change is not None
    ]
    return any(verdicts) if verdicts else None


def _measured_alike(one: Sequence[AlertEvent], other: Sequence[AlertEvent]) -> bool:
    """Whether both subjects have measured changes on a common metric: then `accounts_for` already
    decided whether one explains the other, and anomaly strengths need not be compared."""
    measured = {a.name for a in one if a.change is not None}
    return any(a.name in measured for a in other if a.change is not None)


def _calls_per_request(dependency: AlertEvent, caller: AlertEvent) -> float:
    if dependency.traffic and caller.traffic:
        return dependency.traffic / caller.traffic
    return 1.0
