"""Alert storms: Watchkeeper's correlation engine against the seed's algorithm.

A synthetic service topology (layers of services, each calling a few in the next layer) suffers
incidents: a fault in one service (the known root cause) makes it alert first, then the services
that call it, directly or not, a little later and with some probability, each with one to three
alerts (several instances). A share of the alerts is noise: isolated alerts on random services.
Incidents arrive at a steady rate, so a bigger storm lasts longer rather than being denser.

Baseline: the seed's section 3.2 algorithm re-implemented faithfully: a buffer of the last 1,000
alerts rescanned for every alert (temporal within 10 minutes, causal by name, dependency by the
service map) and a DBSCAN (eps 0.3, min_samples 2) refitted on the whole buffer for every alert.
Its correlations are joined into groups (union-find), and its suggested root cause is the alert
named by the last correlation. The baseline gets a time budget per storm; past it, its figures are
those of the prefix it processed (said in the output), which is fair to it: once its buffer is full
its cost per alert is constant.

Figures: compression (1 - incidents / alerts), pairwise grouping precision and recall against
the true groups, top-1 root-cause accuracy (per true incident, the predicted incident holding most
of its alerts names the true service first), and alerts per second.

Usage: python benchmarks/correlation.py [--sizes 100,1000,10000,100000] [--baseline-budget 60];
the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sklearn.cluster import DBSCAN  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from tasks.correlation import AlertEvent, CorrelationRules, Correlator, rank_root_causes  # noqa: E402
from watchkeeper.config import Correlation, Topology  # noqa: E402

T0 = datetime(2026, 11, 26, tzinfo=UTC)
SYMPTOMS = ("LatencyHigh", "ErrorRateHigh", "ThroughputLow")
CAUSES = ("SaturationHigh", "DependencyDown")
CAUSAL_RULES = {cause: list(SYMPTOMS) for cause in CAUSES}


@dataclass(frozen=True)
class Storm:
    alerts: list[AlertEvent]
    truth: list[int]  # true group per alert; noise alerts are groups of their own
    root_service: dict[int, str]  # true group -> root-cause service (real incidents only)


def topology(layers: int = 6, width: int = 100, fan_out: int = 2, seed: int = 1) -> Topology:
    rng = random.Random(seed)
    names = [[f"svc-{layer}-{i}" for i in range(width)] for layer in range(layers)]
    services: dict[str, list[str]] = {}
    for layer, row in enumerate(names):
        for name in row:
            services[name] = rng.sample(names[layer + 1], fan_out) if layer + 1 < layers else []
    return Topology(services=services)


def storm(
    size: int, topo: Topology, noise: float = 0.05, incident_every: float = 180.0, seed: int = 2
) -> Storm:
    rng = random.Random(seed)
    callers: dict[str, list[str]] = defaultdict(list)
    for service, deps in topo.services.items():
        for dep in deps:
            callers[dep].append(service)
    services = list(topo.services)
    alerts: list[AlertEvent] = []
    truth: list[int] = []
    roots: dict[int, str] = {}
    group, clock = 0, 0.0

    def emit(name: str, service: str, at: float, instance: int, severity: str, group_id: int) -> None:
        labels = {
            "alertname": name,
            "service": service,
            "instance": f"{service}-{instance}",
            "severity": severity,
        }
        alerts.append(
            AlertEvent(
                id=len(alerts),
                name=name,
                service=service,
                starts_at=T0 + timedelta(seconds=at),
                labels=labels,
                annotations={"summary": f"{name} on {service}"},
                strength=3.0 if severity == "critical" else 1.5,
            )
        )
        truth.append(group_id)

    while len(alerts) < size * (1 - noise):
        clock += rng.expovariate(1 / incident_every)
        group += 1
        root = rng.choice(services)
        roots[group] = root
        emit(rng.choice(CAUSES), root, clock, 0, "critical", group)
        frontier, depth, seen = [root], 0, {root}
        while frontier and depth < 3:
            depth += 1
            frontier = [c for s in frontier for c in callers[s] if c not in seen and rng.random() < 0.8]
            seen.update(frontier)
            for service in frontier:
                for instance in range(rng.randint(1, 6)):
                    at = clock + 30 * depth + rng.uniform(0, 60)
                    emit(rng.choice(SYMPTOMS), service, at, instance, "warning", group)
    for _ in range(round(size * noise)):  # noise: isolated alerts on random services at random times
        group += 1
        at = rng.uniform(0, clock)
        emit(rng.choice(SYMPTOMS + CAUSES), rng.choice(services), at, rng.randrange(4), "warning", group)
    order = sorted(range(len(alerts)), key=lambda i: alerts[i].starts_at)[:size]
    kept = [alerts[i] for i in order]
    return Storm(
        [
            AlertEvent(j, a.name, a.service, a.starts_at, a.labels, a.annotations, a.strength)
            for j, a in enumerate(kept)
        ],
        [truth[i] for i in order],
        roots,
    )


def pairwise(truth: Sequence[int], predicted: Sequence[int]) -> tuple[float, float]:
    pairs = lambda counts: sum(c * (c - 1) // 2 for c in counts.values())  # noqa: E731
    together = pairs(Counter(zip(truth, predicted, strict=True)))
    predicted_pairs, true_pairs = pairs(Counter(predicted)), pairs(Counter(truth))
    precision = together / predicted_pairs if predicted_pairs else 1.0
    recall = together / true_pairs if true_pairs else 1.0
    return precision, recall


def top1(data: Storm, predicted: Sequence[int], suggested: dict[int, str | None]) -> float:
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(data.truth):
        members[group].append(index)
    hits = [
        suggested.get(Counter(predicted[i] for i in members[group]).most_common(1)[0][0]) == root
        for group, root in data.root_service.items()
        if members[group]
    ]
    return sum(hits) / len(hits) if hits else 0.0


def run_watchkeeper(data: Storm, topo: Topology, hops: int) -> tuple[list[int], dict[int, str | None], float]:
    rules = CorrelationRules(topo, Correlation(causal_rules=CAUSAL_RULES, dependency_hops=hops))
    started = time.perf_counter()
    correlator = Correlator(rules)
    memberships = correlator.add_all(data.alerts)
    predicted = [m.incident_id for m in memberships]
    groups: dict[int, list[AlertEvent]] = defaultdict(list)
    for alert, incident in zip(data.alerts, predicted, strict=True):
        groups[incident].append(alert)
    suggested = {incident: rank_root_causes(alerts, rules)[0].subject for incident, alerts in groups.items()}
    return predicted, suggested, time.perf_counter() - started


class SeedEngine:
    """The seed's AlertCorrelationEngine, without its placeholders: same buffer, rules and DBSCAN."""

    def __init__(self, topo: Topology) -> None:
        self.buffer: deque[AlertEvent] = deque(maxlen=1000)
        self.dependencies = {s: set(d) for s, d in topo.services.items()}
        self.causal = CAUSAL_RULES
        self.parent: dict[int, int] = {}
        self.suggestion: dict[int, int] = {}

    def features(self, alert: AlertEvent) -> list[float]:
        name = alert.name.lower()
        severity = {"warning": 2, "critical": 3}.get(alert.labels.get("severity", ""), 1)
        return [
            severity,
            alert.starts_at.hour,
            alert.starts_at.weekday(),
            *(
                1 if alert.labels.get(k) else 0
                for k in ("service", "model_name", "pipeline_name", "severity")
            ),
            *(1 if word in name else 0 for word in ("latency", "error", "accuracy", "quality", "drift")),
        ]

    def find(self, i: int) -> int:
        while self.parent.setdefault(i, i) != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def process(self, alert: AlertEvent) -> None:
        self.buffer.append(alert)
        related: list[tuple[str, float, AlertEvent]] = []
        window_start = alert.starts_at - timedelta(minutes=10)
        for other in self.buffer:
            if other.id != alert.id and window_start <= other.starts_at <= alert.starts_at:
                gap = (alert.starts_at - other.starts_at).total_seconds()
                related.append(("temporal", max(0.0, 1 - gap / 600) * 0.6, other))
        effects = self.causal.get(alert.name, [])
        related += [("causal", 0.9, o) for o in self.buffer if o.name in effects]
        for cause, caused in self.causal.items():
            if alert.name in caused:
                related += [("causal", 0.9, o) for o in self.buffer if o.name == cause]
        deps = self.dependencies.get(alert.service or "", set())
        related += [("dependency", 0.7, o) for o in self.buffer if o.service in deps]
        if len(self.buffer) >= 5:
            others = [o for o in self.buffer if o.id != alert.id]
            matrix = StandardScaler().fit_transform(
                [self.features(o) for o in others] + [self.features(alert)]
            )
            clusters = DBSCAN(eps=0.3, min_samples=2).fit_predict(matrix)
            if clusters[-1] != -1:
                related += [
                    ("similar", 0.5, o)
                    for o, c in zip(others, clusters[:-1], strict=True)
                    if c == clusters[-1]
                ]
        if not related:
            return
        for _, _, other in related:
            self.parent[self.find(other.id)] = self.find(alert.id)
        for kind in ("causal", "dependency"):
            chosen = [r for r in related if r[0] == kind]
            if chosen:
                self.suggestion[alert.id] = max(chosen, key=lambda r: r[1])[2].id
                return
        self.suggestion[alert.id] = max(related, key=lambda r: r[1])[2].id


def run_seed(
    data: Storm, topo: Topology, budget: float
) -> tuple[int, list[int], dict[int, str | None], float]:
    engine = SeedEngine(topo)
    started = time.perf_counter()
    processed = 0
    for alert in data.alerts:
        engine.process(alert)
        processed += 1
        if time.perf_counter() - started > budget:
            break
    elapsed = time.perf_counter() - started
    predicted = [engine.find(a.id) for a in data.alerts[:processed]]
    suggested: dict[int, str | None] = {}
    for alert in data.alerts[:processed]:
        if alert.id in engine.suggestion:
            suggested[engine.find(alert.id)] = data.alerts[engine.suggestion[alert.id]].service
        else:
            suggested.setdefault(engine.find(alert.id), alert.service)
    return processed, predicted, suggested, elapsed


def figures(data: Storm, predicted: list[int], suggested: dict[int, str | None], seconds: float) -> dict:
    n = len(predicted)
    view = Storm(data.alerts[:n], data.truth[:n], data.root_service)
    precision, recall = pairwise(view.truth, predicted)
    present = {g for g in view.truth if g in data.root_service}
    view = Storm(view.alerts, view.truth, {g: r for g, r in data.root_service.items() if g in present})
    return {
        "alerts": n,
        "incidents": len(set(predicted)),
        "compression": round(1 - len(set(predicted)) / n, 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "top1": round(top1(view, predicted, suggested), 4),
        "ideal_compression": round(1 - len(set(view.truth)) / n, 4),
        "alerts_per_second": round(n / seconds, 1),
        "seconds": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--incident-every", type=float, default=1800.0, help="mean seconds between incidents")
    parser.add_argument("--hops", type=int, default=Correlation().dependency_hops, help="dependency_hops")
    parser.add_argument("--baseline-budget", type=float, default=60.0, help="seconds per storm for the seed")
    args = parser.parse_args()
    topo = topology()
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        data = storm(size, topo, incident_every=args.incident_every)
        ours = figures(data, *run_watchkeeper(data, topo, args.hops))
        processed, *seed_run = run_seed(data, topo, args.baseline_budget)
        seed = figures(data, *seed_run)
        seed["complete"] = processed == size
        ratio = round(ours["alerts_per_second"] / seed["alerts_per_second"], 1)
        prefix = "" if seed["complete"] else f" (first {processed})"
        results.append({"size": size, "watchkeeper": ours, "seed": seed, "throughput_ratio": ratio})
        print(
            f"{size:>7} alerts | watchkeeper: compression {ours['compression']:.3f} precision "
            f"{ours['precision']:.3f} recall {ours['recall']:.3f} top-1 {ours['top1']:.3f} "
            f"{ours['alerts_per_second']:>9,.0f}/s | seed{prefix}: "
            f"compression {seed['compression']:.3f} precision {seed['precision']:.3f} recall "
            f"{seed['recall']:.3f} top-1 {seed['top1']:.3f} {seed['alerts_per_second']:>7,.0f}/s | "
            f"throughput x{ratio}",
            flush=True,
        )
    print(
        json.dumps(
            {"baseline": "seed section 3.2 (buffer rescan + DBSCAN refit per alert)", "storms": results}
        )
    )


if __name__ == "__main__":
    main()
