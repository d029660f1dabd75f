"""Demo traffic: a credit-approval classifier on river's Agrawal stream, with injectable failures.

The classifier is trained on the opening part of the stream; the rest is scored and posted to the
intake as predictions, and the true labels follow later as feedback, as in production. The
injections are the failures the monitors must catch: concept drift (the stream switches to
another Agrawal function), covariate drift (salary and age shift), nulls in a feature, latency
spikes, error bursts, a prediction collapse (one class for every request), a feature that stops
arriving, a drop in traffic, a failing feature pipeline, a decline in business value, and in the
online feature store the model reads, features left stale (its materialisation stops) or slow
lookups. Positions count predictions after the training part.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from river.datasets import synth
from sklearn.ensemble import HistGradientBoostingClassifier

from watchkeeper.client import WatchkeeperClient
from watchkeeper.config import WatchkeeperConfig

FEATURES = ("salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan")
CATEGORICAL = ("elevel", "car", "zipcode")
MEDIAN_LATENCY_SECONDS = 0.03
MEDIAN_LOOKUP_SECONDS = 0.003
CONCEPT_DRIFT_WIDTH = 50
POST_RETRY_SECONDS = (0.5, 1, 2, 5, 10)
LOG = logging.getLogger("watchkeeper.demo")


@dataclass(frozen=True)
class Injections:
    concept_drift_at: int | None = None
    concept_drift_function: int = 2
    covariate_drift_at: int | None = None
    nulls_at: int | None = None
    null_feature: str = "salary"
    null_rate: float = 0.5
    latency_spike_at: int | None = None
    latency_factor: float = 20.0
    error_burst_at: int | None = None
    error_rate: float = 0.3
    incident_length: int = 2000
    prediction_collapse_at: int | None = None
    collapse_class: int = 0
    missing_feature_at: int | None = None
    missing_feature: str = "car"
    traffic_drop_at: int | None = None
    traffic_factor: float = 0.1
    pipeline_failure_at: int | None = None
    business_decline_at: int | None = None
    business_factor: float = 0.3
    stale_features_at: int | None = None
    feature_store_slow_at: int | None = None
    feature_store_factor: float = 30.0

    def __post_init__(self) -> None:
        for name in ("null_feature", "missing_feature"):
            if getattr(self, name) not in FEATURES:
                raise ValueError(
                    f"{name}: expected one of {', '.join(FEATURES)}, got {getattr(self, name)!r}"
                )

    @property
    def first_position(self) -> int | None:
        """Where the earliest configured injection starts."""
        starts = [
            getattr(self, f.name)
            for f in fields(self)
            if f.name.endswith("_at") and getattr(self, f.name) is not None
        ]
        return min(starts, default=None)

    def during(self, start: int | None, position: int, lasting: int | None = None) -> bool:
        if start is None or position < start:
            return False
        return lasting is None or position < start + lasting


@dataclass(frozen=True)
class DailyCycle:
    """Real traffic rises and falls every day; the demo's day is compressed to `period_seconds`.
    The rate starts at its mean and falls first: `amplitude` below it a quarter day in (the trough),
    `amplitude` above it three quarters in (the peak)."""

    period_seconds: float = 7200.0
    amplitude: float = 0.3

    def __post_init__(self) -> None:
        if self.period_seconds <= 0:
            raise ValueError(f"period_seconds: expected more than 0, got {self.period_seconds}")
        if not 0 <= self.amplitude < 1:
            raise ValueError(f"amplitude: expected 0 to below 1, got {self.amplitude}")

    def factor(self, elapsed_seconds: float) -> float:
        """How much of the mean rate arrives this far into the run."""
        return 1 - self.amplitude * math.sin(2 * math.pi * elapsed_seconds / self.period_seconds)


@dataclass(frozen=True)
class DemoEvent:
    """One scored application: the prediction record (without timestamp) and its later label."""

    position: int
    request_id: str
    features: dict[str, Any]
    prediction: int | None
    score: float | None
    latency_seconds: float
    error: bool
    label: int
    business_value: float


class DemoTraffic:
    def __init__(
        self,
        model_name: str = "credit_approval",
        model_version: str = "v1",
        train_size: int = 5000,
        seed: int = 7,
        injections: Injections = Injections(),
        reference_size: int = 0,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.train_size = train_size
        self.reference_size = reference_size
        self.seed = seed
        self.injections = injections
        self.rng = np.random.default_rng(seed)
        self.stream = iter(self._build_stream())
        self.classifier = self._train()
        self.position = 0
        self.reference = self._held_back(reference_size)
        self.injected_at: datetime | None = None

    def _held_back(self, size: int) -> pd.DataFrame:
        """A labelled slice of the stream after the training part, scored by the classifier but never
        trained on: the model's known-good reference for drift, data quality and calibration."""
        if size == 0:
            return pd.DataFrame()
        rows = [next(self.stream) for _ in range(size)]
        x = np.array([[r[0][f] for f in FEATURES] for r in rows], dtype=float)
        scores = self.classifier.predict_proba(x)[:, 1]
        frame = pd.DataFrame([{f: r[0][f] for f in FEATURES} for r in rows])
        frame["prediction"] = (scores >= 0.5).astype(int)
        frame["score"] = scores.round(6)
        frame["label"] = [int(r[1]) for r in rows]
        return frame

    def _build_stream(self) -> synth.Agrawal | synth.ConceptDriftStream:
        base = synth.Agrawal(classification_function=0, seed=self.seed)
        at = self.injections.concept_drift_at
        if at is None:
            return base
        drifted = synth.Agrawal(
            classification_function=self.injections.concept_drift_function, seed=self.seed + 1
        )
        position = self.train_size + self.reference_size + at
        # ConceptDriftStream switches along a sigmoid centred on `position`; a narrow width makes the
        # switch abrupt, but its exp() overflows when width < 4 * position / 709.
        width = max(CONCEPT_DRIFT_WIDTH, math.ceil(4 * position / 700))
        return synth.ConceptDriftStream(
            stream=base, drift_stream=drifted, position=position, width=width, seed=self.seed
        )

    def _train(self) -> HistGradientBoostingClassifier:
        rows = [next(self.stream) for _ in range(self.train_size)]
        x = np.array([[r[0][f] for f in FEATURES] for r in rows], dtype=float)
        y = np.array([r[1] for r in rows])
        categorical = [f in CATEGORICAL for f in FEATURES]
        return HistGradientBoostingClassifier(categorical_features=categorical, random_state=self.seed).fit(
            x, y
        )

    def _features(self, raw: dict[str, Any]) -> dict[str, Any]:
        features: dict[str, Any] = {f: raw[f] for f in FEATURES}
        inj = self.injections
        if inj.during(inj.covariate_drift_at, self.position):
            features["salary"] = features["salary"] * 1.6 + 20_000
            features["age"] = min(features["age"] + 15, 80)
        if inj.during(inj.nulls_at, self.position) and self.rng.random() < inj.null_rate:
            features[inj.null_feature] = None
        if inj.during(inj.missing_feature_at, self.position):
            del features[inj.missing_feature]
        return features

    def rate_factor(self) -> float:
        """How much of the normal request rate arrives at the current position (a traffic drop)."""
        inj = self.injections
        return inj.traffic_factor if inj.during(inj.traffic_drop_at, self.position) else 1.0

    def next_batch(self, size: int) -> list[DemoEvent]:
        raws = [next(self.stream) for _ in range(size)]
        events = []
        feature_rows = []
        for raw, _ in raws:
            feature_rows.append(self._features(raw))
            self.position += 1
        x = np.array(
            [[np.nan if row.get(f) is None else row[f] for f in FEATURES] for row in feature_rows],
            dtype=float,
        )
        scores = self.classifier.predict_proba(x)[:, 1]
        inj = self.injections
        start = inj.first_position
        if self.injected_at is None and start is not None and self.position > start:
            self.injected_at = datetime.now(UTC)
        for offset, ((raw, label), features, score) in enumerate(
            zip(raws, feature_rows, scores, strict=True)
        ):
            position = self.position - size + offset
            latency = float(self.rng.lognormal(np.log(MEDIAN_LATENCY_SECONDS), 0.35))
            if inj.during(inj.latency_spike_at, position, inj.incident_length):
                latency *= inj.latency_factor
            error = (
                inj.during(inj.error_burst_at, position, inj.incident_length)
                and self.rng.random() < inj.error_rate
            )
            if inj.during(inj.prediction_collapse_at, position):
                score = float(inj.collapse_class)
            value = float(raw["loan"])
            if inj.during(inj.business_decline_at, position):
                value *= inj.business_factor
            events.append(
                DemoEvent(
                    position=position,
                    request_id=f"{self.model_name}-{self.seed}-{position}",
                    features=features,
                    prediction=None if error else int(score >= 0.5),
                    score=None if error else round(float(score), 6),
                    latency_seconds=round(latency, 6),
                    error=error,
                    label=int(label),
                    business_value=round(value, 2),
                )
            )
        return events

    def prediction_record(self, event: DemoEvent, timestamp: datetime) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "request_id": event.request_id,
            "timestamp": timestamp,
            "features": event.features,
            "prediction": event.prediction,
            "score": event.score,
            "latency_seconds": event.latency_seconds,
            "error": event.error,
        }

    def pipeline_run_record(
        self, pipeline: str, events: list[DemoEvent], timestamp: datetime
    ) -> dict[str, Any]:
        """The feature pipeline run that produced this batch: rows with a null feature count as its errors,
        and every row once the pipeline fails."""
        return {
            "pipeline_name": pipeline,
            "run_id": f"{self.model_name}-{self.seed}-{events[0].position}",
            "stage": "features",
            "started_at": timestamp.isoformat(),
            "duration_seconds": round(float(self.rng.lognormal(np.log(0.002 * len(events)), 0.3)), 6),
            "records": len(events),
            "errors": len(events)
            if self.injections.during(self.injections.pipeline_failure_at, events[0].position)
            else sum(any(v is None for v in e.features.values()) for e in events),
        }

    def feedback_record(self, event: DemoEvent, timestamp: datetime) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "request_id": event.request_id,
            "label": event.label,
            "business_value": event.business_value,
            "timestamp": timestamp,
        }


def write_reference(reference: pd.DataFrame, path: Path, replace: bool = False) -> bool:
    """Write the demo's held-back rows as the model's file reference; True when written. An existing
    file is kept unless `replace`: a second generator beside a running stack must not change the
    drift reference under it. Written whole (a temp file, then a link or rename), so a reader never
    sees half a file, and of two generators starting at once only one creates it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not replace:
        return False
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    reference.to_parquet(partial, index=False)
    try:
        if replace:
            partial.replace(path)
            return True
        os.link(partial, path)  # fails if another writer got there first
        return True
    except FileExistsError:
        return False
    finally:
        partial.unlink(missing_ok=True)


class DemoFeatureStore:
    """The online feature store the demo model reads its features from: a lookup of each of its
    views per prediction, carrying the time of the newest materialisation, which is the end of the
    feature pipeline's latest run that did not fail every record. Its faults: the materialisation
    stops (`stale_features_at`: the pipeline's schedule died, so it reports no runs) and lookups
    slow down (`feature_store_slow_at`)."""

    def __init__(
        self, store: str, views: list[str], seed: int, injections: Injections = Injections()
    ) -> None:
        self.store, self.views, self.injections = store, views, injections
        self.rng = np.random.default_rng(seed + 1)
        self.materialized_at: datetime | None = None

    def materialises(self, position: int) -> bool:
        """Whether the feature pipeline still runs at this position."""
        return not self.injections.during(self.injections.stale_features_at, position)

    def materialised(self, run: dict[str, Any]) -> None:
        if run["errors"] < run["records"]:
            ended = datetime.fromisoformat(run["started_at"]) + timedelta(seconds=run["duration_seconds"])
            self.materialized_at = max(self.materialized_at or ended, ended)

    def lookup_records(self, events: list[DemoEvent], timestamp: datetime) -> list[dict[str, Any]]:
        inj = self.injections
        records = []
        for event in events:
            for view in self.views:
                latency = float(self.rng.lognormal(np.log(MEDIAN_LOOKUP_SECONDS), 0.3))
                if inj.during(inj.feature_store_slow_at, event.position):
                    latency *= inj.feature_store_factor
                records.append(
                    {
                        "feature_store": self.store,
                        "feature_view": view,
                        "request_id": event.request_id,
                        "timestamp": timestamp,
                        "latency_seconds": round(latency, 6),
                        "materialized_at": self.materialized_at,
                    }
                )
        return records


def demo_feature_store(
    config: WatchkeeperConfig, model: str, seed: int, injections: Injections
) -> DemoFeatureStore | None:
    """The first configured feature store with views the model reads, serving those views."""
    for feature_store in config.feature_stores:
        views = [v.name for v in feature_store.views if model in v.models]
        if views:
            return DemoFeatureStore(feature_store.name, views, seed, injections)
    return None


@dataclass
class Sent:
    predictions: int = 0
    feedback: int = 0
    pipeline_runs: int = 0
    feature_lookups: int = 0


def post_with_retry(
    client: httpx.Client, path: str, records: list[dict[str, Any]], log: Callable[[str], None]
) -> None:
    """Post a batch until the service takes it: demo traffic is never silently dropped."""
    for attempt, pause in enumerate((*POST_RETRY_SECONDS, None), start=1):
        try:
            response = client.post(path, json=records)
            if response.status_code < 500:
                response.raise_for_status()
                return
            problem = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            problem = type(exc).__name__
        if pause is None:
            raise RuntimeError(f"{path}: gave up after {attempt} attempts ({problem})")
        log(f"{path}: {problem}; retrying in {pause} s")
        time.sleep(pause)


def run_demo_traffic(
    traffic: DemoTraffic,
    url: str,
    rate: float,
    count: int,
    batch_size: int,
    label_delay: int,
    token: str | None = None,
    pipeline: str | None = None,
    stop: threading.Event | None = None,
    feature_store: DemoFeatureStore | None = None,
    daily_cycle: DailyCycle | None = None,
) -> Sent:
    """Post until `count` predictions are sent (0: until `stop` is set or forever); `pipeline` also
    reports its runs, and `feature_store` the lookups of each prediction's features. A traffic drop
    and the `daily_cycle` stretch or shorten the time between batches."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sent = Sent()
    awaiting_label: deque[DemoEvent] = deque()
    started = next_batch_at = time.monotonic()
    stop = stop or threading.Event()
    records = WatchkeeperClient(url, token=token, batch_size=1000, flush_interval=0.2)
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while (count == 0 or sent.predictions < count) and not stop.is_set():
            size = batch_size if count == 0 else min(batch_size, count - sent.predictions)
            events = traffic.next_batch(size)
            now = datetime.now(UTC)
            for event in events:
                records.log_prediction(**traffic.prediction_record(event, now))
            sent.predictions += len(events)
            if pipeline and (feature_store is None or feature_store.materialises(events[0].position)):
                record = traffic.pipeline_run_record(pipeline, events, now)
                post_with_retry(client, "/v1/pipeline-runs", [record], LOG.warning)
                sent.pipeline_runs += 1
                if feature_store is not None:
                    feature_store.materialised(record)
            if feature_store is not None:
                lookups = feature_store.lookup_records(events, now)
                for lookup in lookups:
                    records.log_feature_lookup(**lookup)
                sent.feature_lookups += len(lookups)
            awaiting_label.extend(events)
            due = [awaiting_label.popleft() for _ in range(max(0, len(awaiting_label) - label_delay))]
            if count and sent.predictions >= count:
                due += list(awaiting_label)
            for event in due:
                records.log_label(**traffic.feedback_record(event, now))
            sent.feedback += len(due)
            if rate > 0:
                cycle = daily_cycle.factor(time.monotonic() - started) if daily_cycle else 1.0
                next_batch_at += len(events) / (rate * traffic.rate_factor() * cycle)
                stop.wait(max(0.0, next_batch_at - time.monotonic()))
    records.close(timeout=60)
    lost = records.stats()
    if lost.dropped or lost.refused:
        raise RuntimeError(
            f"{lost.dropped} records dropped and {lost.refused} refused ({lost.last_refusal or 'queue full'})"
        )
    return sent
