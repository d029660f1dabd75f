"""The fault drill: every failure class the demo can inject, side by side, through the whole stack.

`watchkeeper up` starts the stack (Prefect with the scheduled flows, the service, Prometheus with
the shipped rules, Alertmanager with the shipped routes) on free loopback ports, with a
configuration derived from the example: one copy of its model per fault and one clean copy, each
with its own dataset, pipeline and services, so their alerts and incidents do not mix. Demo traffic
runs for every model; after `inject_after` seconds each faulty model's failure starts. The drill
reads, from the store, when each alert's first webhook arrived at Watchkeeper, which incident it
opened, the incident's root cause and the playbook's decision.

The example's model, rules and routes are used as shipped (their SHA-256 is in the result); the
one per-model setting the drill makes is the throughput floor (`thresholds.min_throughput_rps`),
set to half the rate at the daily cycle's trough, as an operator sets it for a model of that
traffic. Every model's traffic follows a compressed daily cycle, and the faults start after the
anomaly rules' ten-minute warm-up.
"""

from __future__ import annotations

import copy
import hashlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import select

from watchkeeper.anomalies import WARM_UP_SECONDS
from watchkeeper.intake.kinds import BINARY
from watchkeeper.local.demo import (
    DailyCycle,
    DemoFeatureStore,
    DemoTraffic,
    Injections,
    demo_feature_store,
    run_demo_traffic,
)
from watchkeeper.local.demo_kinds import KindInjections, demo_of
from watchkeeper.settings import DEFAULT_CONFIG, REPO_ROOT, Settings
from watchkeeper.store import Store
from watchkeeper.store.remediation import RemediationAction
from watchkeeper.store.schema import Alert, Incident, IncidentMember

RULES = REPO_ROOT / "infra" / "prometheus" / "rules" / "watchkeeper-alerts.yml"
ANOMALY_RULES = RULES.with_name("watchkeeper-anomalies.yml")
TRAIN_ROWS = 5000
REFERENCE_ROWS = 5000
LABEL_DELAY_SECONDS = 20
POLL_SECONDS = 2.0
STACK_START_SECONDS = 240


@dataclass(frozen=True)
class Fault:
    """One failure class: how to inject it at a position, the alerts that should page for it, and
    the example's model it is injected into (its kind's demo traffic)."""

    id: str
    injections: Callable[[int], Injections | KindInjections]
    expected: tuple[str, ...]
    critical: bool = False
    template: str = "credit_approval"


NEVER_ENDING = 10**9
FAULTS: dict[str, Fault] = {
    f.id: f
    for f in (
        Fault(
            "concept_drift",
            lambda at: Injections(concept_drift_at=at, concept_drift_function=2),
            ("ModelAccuracyCollapse", "ModelAccuracyCritical", "ModelAccuracyDegraded", "BusinessImpactDrop"),
            critical=True,
        ),
        Fault(
            "covariate_drift",
            lambda at: Injections(covariate_drift_at=at),
            # Salary and age arrive shifted (a unit change upstream) while the labels follow the
            # true values: beyond drift, salaries leave the reference's range and accuracy falls.
            (
                "DataDriftDetected",
                "SevereDataDrift",
                "DataRecordsFailingChecksCritical",
                "DataRecordsFailingChecks",
                "DataQualityCritical",
                "DataQualityDegraded",
                "ModelAccuracyCollapse",
                "ModelAccuracyCritical",
                "ModelAccuracyDegraded",
                "BusinessImpactDrop",
            ),
        ),
        Fault(
            "null_burst",
            lambda at: Injections(nulls_at=at, null_feature="salary", null_rate=0.5),
            (
                "DataRecordsFailingChecksCritical",
                "DataRecordsFailingChecks",
                "DataQualityCritical",
                "DataQualityDegraded",
                "PipelineErrorRateCritical",
                "PipelineErrorRateHigh",
                "PipelineErrorRateAnomalous",
                "SevereDataDrift",
                "DataDriftDetected",
            ),
            critical=True,
        ),
        Fault(
            "missing_feature",
            lambda at: Injections(missing_feature_at=at, missing_feature="car"),
            (
                "DataRecordsFailingChecksCritical",
                "DataRecordsFailingChecks",
                "DataQualityCritical",
                "DataQualityDegraded",
                "SevereDataDrift",
                "DataDriftDetected",
            ),
            critical=True,
        ),
        Fault(
            "latency_spike",
            lambda at: Injections(latency_spike_at=at, latency_factor=200, incident_length=NEVER_ENDING),
            (
                "ModelInferenceLatencySpike",
                "ModelInferenceLatencyCritical",
                "ModelInferenceLatencyHigh",
                "ModelLatencyAnomalous",
            ),
            critical=True,
        ),
        Fault(
            "error_burst",
            lambda at: Injections(error_burst_at=at, error_rate=0.3, incident_length=NEVER_ENDING),
            ("ModelErrorBurst", "ModelErrorRateHigh", "ModelErrorRateAnomalous"),
            critical=True,
        ),
        Fault(
            "prediction_collapse",
            lambda at: Injections(prediction_collapse_at=at, collapse_class=0),
            (
                "ModelPredictionCollapse",
                "ModelAccuracyCollapse",
                "ModelAccuracyCritical",
                "ModelAccuracyDegraded",
                "BusinessImpactDrop",
            ),
            critical=True,
        ),
        Fault(
            "traffic_drop",
            lambda at: Injections(traffic_drop_at=at, traffic_factor=0.1),
            ("ModelThroughputAnomalous", "ModelThroughputLow"),
        ),
        Fault(
            "pipeline_failure",
            lambda at: Injections(pipeline_failure_at=at),
            ("PipelineErrorRateAnomalous", "PipelineErrorRateCritical", "PipelineErrorRateHigh"),
        ),
        Fault(
            "business_decline",
            lambda at: Injections(business_decline_at=at, business_factor=0.3),
            ("BusinessImpactAnomalous", "BusinessImpactDrop", "BusinessImpactDecline"),
        ),
        Fault(
            "stale_features",
            lambda at: Injections(stale_features_at=at),
            ("FeatureViewStale",),
        ),
        Fault(
            "feature_store_slow",
            lambda at: Injections(feature_store_slow_at=at, feature_store_factor=30),
            ("FeatureStoreLatencyHigh",),
        ),
        Fault(
            "regression_bias",
            lambda at: KindInjections(regression_bias_at=at),
            (
                "ModelBiasBurst",
                "ModelPredictionsBiased",
                "ModelRegressionErrorCritical",
                "ModelRegressionErrorHigh",
            ),
            critical=True,
            template="demand_forecast",
        ),
        Fault(
            "ranking_collapse",
            lambda at: KindInjections(ranking_collapse_at=at),
            (
                "ModelRankingCollapse",
                "ModelRankingQualityDegraded",
                "ModelRecommendationsShifted",
                "BusinessImpactDrop",
            ),
            critical=True,
            template="product_recommendations",
        ),
        Fault(
            "popularity_shift",
            lambda at: KindInjections(popularity_shift_at=at),
            (
                "ModelRecommendationsShifted",
                "ModelRankingCollapse",
                "ModelRankingQualityDegraded",
                "BusinessImpactDrop",
            ),
            template="product_recommendations",
        ),
        Fault(
            "embedding_drift",
            lambda at: KindInjections(embedding_drift_at=at),
            ("EmbeddingDriftDetected",),
            template="product_recommendations",
        ),
    )
}
CLEAN = "clean"
CREDIT = "credit_approval"


def template_of(subject: str) -> str:
    """The example's model a subject copies: its fault's, or for `clean_<model>` that model (the
    credit classifier for `clean`)."""
    if subject in FAULTS:
        return FAULTS[subject].template
    return subject.removeprefix(f"{CLEAN}_") if subject.startswith(f"{CLEAN}_") else CREDIT


def clean_subjects(faults: tuple[str, ...]) -> list[str]:
    """One clean model per kind the faults use: `clean` (the credit classifier) always."""
    templates = dict.fromkeys(FAULTS[f].template for f in faults if FAULTS[f].template != CREDIT)
    return [CLEAN, *(f"{CLEAN}_{template}" for template in templates)]


# Faults start once the anomaly rules' warm-up is over (no baseline, no anomaly alert).
INJECT_AFTER_SECONDS = float(WARM_UP_SECONDS)


@dataclass(frozen=True)
class DrillOptions:
    """`day_minutes`: every model's traffic follows a daily cycle compressed to this long (0: flat),
    moving the rate `day_amplitude` from its mean, so the clean models prove the anomaly rules
    quiet through a falling rate and its trough."""

    faults: tuple[str, ...] = tuple(FAULTS)
    seed: int = 7
    inject_after: float = INJECT_AFTER_SECONDS
    rate: float = 10.0
    clean_minutes: float = 30.0
    budget_minutes: float = 45.0
    day_minutes: float = 120.0
    day_amplitude: float = 0.3

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"faults: unknown {', '.join(unknown)}; expected some of {', '.join(FAULTS)}")
        if not 5 <= self.rate <= 100:
            raise ValueError(f"rate: expected 5 to 100 predictions per second, got {self.rate}")
        if self.day_minutes:
            DailyCycle(self.day_minutes * 60, self.day_amplitude)

    @property
    def min_throughput_rps(self) -> float:
        """Half the daily trough's rate: where an operator puts the floor of a model of this traffic."""
        trough = self.rate * (1 - self.day_amplitude) if self.day_minutes else self.rate
        return trough / 2

    @property
    def daily_cycle(self) -> DailyCycle | None:
        return DailyCycle(self.day_minutes * 60, self.day_amplitude) if self.day_minutes else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_name(subject: str) -> str:
    return f"drill_{subject}"


def drill_config(example: dict[str, Any], subjects: list[str], min_throughput_rps: float) -> dict[str, Any]:
    """The example configuration with one of its models (`template_of`) copied once per subject, each
    on its own dataset, pipeline, feature store and services (so correlation never mixes two
    faults), and a throughput floor (`DrillOptions.min_throughput_rps`)."""
    config = copy.deepcopy(example)
    templates = {m["name"]: m for m in example["models"]}
    services = example["topology"]["services"]
    config["models"], config["datasets"] = [], []
    config["pipelines"] = [p for p in example["pipelines"] if "prefect_deployment" in p]
    config["topology"] = {"services": {}}
    config["feature_stores"] = []
    for subject in subjects:
        name = model_name(subject)
        template = templates[template_of(subject)]
        model = copy.deepcopy(template)
        model["name"] = name
        model["service"] = f"{name}-{template['service']}"
        model["thresholds"] = {**model.get("thresholds", {}), "min_throughput_rps": min_throughput_rps}
        config["models"].append(model)
        config["datasets"].append({"name": f"{name}_data", "model": name, "pipeline": f"{name}_pipeline"})
        config["pipelines"].append({"name": f"{name}_pipeline", "service": f"{name}-feature-store"})
        config["feature_stores"] += feature_stores_of(example, template["name"], name)
        for service, calls in services.items():
            config["topology"]["services"][f"{name}-{service}"] = [f"{name}-{c}" for c in calls]
    return config


def feature_stores_of(example: dict[str, Any], template: str, name: str) -> list[dict[str, Any]]:
    """The example's feature stores with views `template` reads, copied for the subject `name`: its
    own store and services, its views materialised by its own pipeline and read by it alone."""
    stores = []
    for feature_store in example.get("feature_stores", []):
        views = [
            {**view, "models": [name], "materialized_by": f"{name}_pipeline"}
            for view in feature_store["views"]
            if template in view.get("models", [])
        ]
        if views:
            copy_name = f"{name}_{feature_store['name']}"
            service = f"{name}-{feature_store['service']}" if "service" in feature_store else None
            stores.append({**feature_store, "name": copy_name, "service": service, "views": views})
    return stores


@dataclass
class Subject:
    """One model of the drill, its traffic and what happened to it."""

    name: str
    fault: Fault | None
    traffic: Any  # DemoTraffic, or a regression or ranking model's (`demo_kinds`)
    thread: threading.Thread | None = None
    feature_store: DemoFeatureStore | None = None
    alerts: dict[str, datetime] = field(default_factory=dict)
    first_ids: dict[str, int] = field(default_factory=dict)

    @property
    def labels(self) -> set[str]:
        return {self.name, f"{self.name}_data", f"{self.name}_pipeline"}

    def owns(self, labels: dict[str, str]) -> bool:
        """An alert about its model, dataset, pipeline or one of its feature stores."""
        values = {labels.get(k) for k in ("model_name", "dataset_name", "pipeline_name")}
        feature_store = self.feature_store.store if self.feature_store is not None else None
        return bool(self.labels & values) or (
            feature_store is not None and labels.get("feature_store") == feature_store
        )

    @property
    def detected(self) -> bool:
        return self.fault is not None and any(a in self.alerts for a in self.fault.expected)


# The Prometheus job of the node exporter (infra/prometheus/prometheus.yml).
HOST_JOB = "node"


def owner(labels: dict[str, str], subjects: list[Subject]) -> Subject | None:
    return next((s for s in subjects if s.owns(labels)), None)


def anomaly_rules_cost(prometheus: str, models: int) -> dict[str, Any]:
    """What the anomaly rules cost the drill's Prometheus: the series they keep per model (each
    model of the drill has its own pipeline and business value), and each of their groups' mean
    evaluation time over the last ten minutes beside all of the rules'."""

    def query(expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]["result"]

    durations = "avg_over_time(prometheus_rule_group_last_duration_seconds{%s}[10m])"
    series = query('count({__name__=~"ai_anomaly:.+"})')
    groups = query(durations % 'rule_group=~".*;ai_anomaly_.*"')
    every = query(f"sum({durations % ''})")
    total = float(series[0]["value"][1]) if series else 0.0
    return {
        "series": total,
        "series_per_model": round(total / models, 1),
        "evaluation_seconds": {
            g["metric"]["rule_group"].split(";")[-1]: round(float(g["value"][1]), 5) for g in groups
        },
        "all_rules_evaluation_seconds": round(float(every[0]["value"][1]), 5) if every else None,
    }


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 1)


class Drill:
    def __init__(self, options: DrillOptions, home: Path, log: Callable[[str], None]) -> None:
        self.options, self.home, self.log = options, home, log
        self.stop = threading.Event()
        self.unattributed: dict[str, datetime] = {}
        # Alerts on the machine running the drill (its node exporter's): true, but about no subject.
        self.host_alerts: dict[str, datetime] = {}

    def _watchkeeper(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`watchkeeper ARGS` on the drill's home and configuration, with a Prefect server of its own."""
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env |= {"WATCHKEEPER_HOME": str(self.home), "WATCHKEEPER_CONFIG": str(self.home / "drill.yaml")}
        argv = [str(Path(sys.executable).parent / "watchkeeper"), *args]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=STACK_START_SECONDS)
        if done.returncode != 0:
            raise RuntimeError(f"watchkeeper {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done

    def _subjects(self, tasks: dict[str, str]) -> list[Subject]:
        """Each fault's model and the clean ones, with their kind's demo traffic (`tasks`: the
        example's models' tasks by name)."""
        at = int(self.options.rate * self.options.inject_after)
        subjects = []
        for subject in [*self.options.faults, *clean_subjects(self.options.faults)]:
            fault = FAULTS.get(subject)
            template = template_of(subject)
            demo = DemoTraffic if tasks[template] == BINARY else demo_of(tasks[template])
            injections = (
                fault.injections(at) if fault else (Injections() if template == CREDIT else KindInjections())
            )
            traffic = demo(
                model_name=model_name(subject),
                train_size=TRAIN_ROWS,
                seed=self.options.seed,
                injections=injections,
                reference_size=REFERENCE_ROWS,
            )
            subjects.append(Subject(model_name(subject), fault, traffic))
        return subjects

    def _start_traffic(self, subjects: list[Subject], url: str) -> None:
        rate = self.options.rate
        batch = max(1, round(rate))
        for subject in subjects:
            subject.thread = threading.Thread(
                target=run_demo_traffic,
                kwargs={
                    "traffic": subject.traffic,
                    "url": url,
                    "rate": rate,
                    "count": 0,
                    "batch_size": batch,
                    "label_delay": int(rate * LABEL_DELAY_SECONDS),
                    "pipeline": f"{subject.name}_pipeline",
                    "stop": self.stop,
                    "feature_store": subject.feature_store,
                    "daily_cycle": self.options.daily_cycle,
                },
                daemon=True,
                name=f"traffic-{subject.name}",
            )
            subject.thread.start()

    def _read_alerts(self, store: Store, subjects: list[Subject]) -> None:
        with store.reading() as session:
            rows = session.execute(
                select(Alert.id, Alert.alertname, Alert.labels, Alert.received_at).order_by(Alert.id)
            )
            for alert_id, alertname, labels, received in rows:
                found = owner(labels, subjects)
                if found is None and labels.get("job") == HOST_JOB:
                    self.host_alerts.setdefault(alertname, received)
                elif found is None:
                    self.unattributed.setdefault(alertname, received)
                elif alertname not in found.alerts:
                    found.alerts[alertname] = received
                    found.first_ids[alertname] = alert_id

    @staticmethod
    def _incident(store: Store, alert_id: int) -> dict[str, Any]:
        """When the alert joined an incident, that incident's root cause and its first playbook decision."""
        with store.reading() as session:
            found = session.execute(
                select(IncidentMember.joined_at, Incident)
                .join(Incident, Incident.id == IncidentMember.incident_id)
                .where(IncidentMember.alert_id == alert_id)
            ).first()
            if found is None:
                return {"joined_at": None, "root_cause": None, "decision": None}
            joined_at, incident = found
            cause = session.get(Alert, incident.root_cause_alert_id) if incident.root_cause_alert_id else None
            decision = session.scalar(
                select(RemediationAction.decision)
                .where(RemediationAction.incident_id == incident.id)
                .order_by(RemediationAction.id)
            )
            root = (
                f"{cause.alertname} on {incident.root_cause_service or cause.model_name}" if cause else None
            )
            return {"joined_at": joined_at, "root_cause": root, "decision": decision}

    def _finished(self, subjects: list[Subject], started: float, deadline: float) -> bool:
        if time.monotonic() >= deadline:
            return True
        clean_over = time.monotonic() - started >= self.options.clean_minutes * 60
        return clean_over and all(s.detected for s in subjects if s.fault is not None)

    def run(self, ports: dict[str, int]) -> dict[str, Any]:
        drill_started = time.monotonic()
        deadline = drill_started + self.options.budget_minutes * 60 - 90
        example = yaml.safe_load(DEFAULT_CONFIG.read_text())
        self.home.mkdir(parents=True, exist_ok=True)
        subjects = self._subjects({m["name"]: m.get("task", BINARY) for m in example["models"]})
        names = [*self.options.faults, *clean_subjects(self.options.faults)]
        config = drill_config(example, names, self.options.min_throughput_rps)
        (self.home / "drill.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        settings = Settings(home=self.home, config=self.home / "drill.yaml")
        for subject in subjects:  # each kind's reference, from its clean model's held-back rows
            subject.feature_store = demo_feature_store(
                settings.monitoring, subject.name, self.options.seed, subject.traffic.injections
            )
            if subject.fault is None:
                reference = settings.monitoring.model(subject.name).reference.path  # type: ignore[union-attr]
                reference.parent.mkdir(parents=True, exist_ok=True)
                subject.traffic.reference.to_parquet(reference, index=False)
        store = settings.open_store()
        store.upgrade()
        started_at = datetime.now(UTC)
        self._watchkeeper("up", *(f"--{k}-port={v}" for k, v in ports.items()))
        try:
            self._start_traffic(subjects, f"http://127.0.0.1:{ports['service']}")
            healthy = time.monotonic()
            self.log(
                f"stack up in {healthy - drill_started:.0f} s; traffic at {self.options.rate} rps per model"
            )
            while not self._finished(subjects, healthy, deadline):
                self.stop.wait(POLL_SECONDS)
                self._read_alerts(store, subjects)
            clean_minutes = round((time.monotonic() - healthy) / 60, 1)
            results = {s.name.removeprefix("drill_"): self._result(store, s) for s in subjects if s.fault}
            cost = anomaly_rules_cost(f"http://127.0.0.1:{ports['prometheus']}", len(subjects))
        finally:
            self.stop.set()
            self._watchkeeper("down")
        cleans = [s for s in subjects if s.fault is None]
        summary = self._summary(results, cleans, clean_minutes)
        return summary | {"anomaly_rules": cost, "started_at": started_at.isoformat()}

    def _result(self, store: Store, subject: Subject) -> dict[str, Any]:
        assert subject.fault is not None
        injected = subject.traffic.injected_at
        fired = [a for a in subject.fault.expected if a in subject.alerts]
        first = min(fired, key=subject.alerts.__getitem__) if fired else None
        none = {"joined_at": None, "root_cause": None, "decision": None}
        incident = self._incident(store, subject.first_ids[first]) if first else none
        return {
            "detected": subject.detected,
            "expected_alerts": list(subject.fault.expected),
            "alerts": {name: seconds_between(injected, at) for name, at in sorted(subject.alerts.items())},
            "seconds_to_webhook": seconds_between(injected, subject.alerts[first]) if first else None,
            "seconds_to_incident": seconds_between(injected, incident["joined_at"]),
            "root_cause": incident["root_cause"],
            "decision": incident["decision"],
            "injected_at": injected.isoformat() if injected else None,
        }

    def _summary(
        self, results: dict[str, dict[str, Any]], cleans: list[Subject], minutes: float
    ) -> dict[str, Any]:
        critical = [
            r["seconds_to_webhook"]
            for fault, r in results.items()
            if FAULTS[fault].critical and r["seconds_to_webhook"] is not None
        ]
        false_alerts = {**{a: at for s in cleans for a, at in s.alerts.items()}, **self.unattributed}
        return {
            "config_sha256": sha256(DEFAULT_CONFIG),
            "rules_sha256": sha256(RULES),
            "anomaly_rules_sha256": sha256(ANOMALY_RULES),
            "day_minutes": self.options.day_minutes,
            "seed": self.options.seed,
            "rate": self.options.rate,
            "inject_after": self.options.inject_after,
            "faults": results,
            "clean": {"minutes": minutes, "false_alerts": len(false_alerts), "alerts": sorted(false_alerts)},
            "host_alerts": sorted(self.host_alerts),
            "critical_median_seconds_to_webhook": round(statistics.median(critical), 1) if critical else None,
            "detected": f"{sum(r['detected'] for r in results.values())}/{len(results)}",
        }
