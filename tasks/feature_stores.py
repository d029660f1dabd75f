"""Feature-store health: each view's newest materialisation, and the null and default share of its
features as its models received them. Lookup latency and failed keys are counted at intake
(`/v1/feature-lookups`); what Prometheus compares them with is in the config's thresholds."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.measurements import Measurement, Window
from tasks.metrics import save_results
from watchkeeper.config import FeatureStore, FeatureView
from watchkeeper.store import Store
from watchkeeper.store.samples import Sampling, window_sample
from watchkeeper.store.schema import FeatureLookup, LatestWindow, PipelineRun
from watchkeeper.times import as_utc

KIND = "feature_store"
MATERIALIZED = "last_materialized_timestamp_seconds"
# How far back the first evaluation reads lookups for the newest materialisation they served;
# later ones read from the previous evaluation's end (less this margin, for late posts).
FIRST_LOOKBACK = timedelta(hours=1)
LATE_MARGIN = timedelta(minutes=5)


def served_shares(features: pd.DataFrame, view: FeatureView, model: str) -> list[Measurement]:
    """The share of `model`'s sampled predictions whose value of each of the view's features is
    null or absent, and (for a feature with a configured default) equal to the store's default."""
    if features.empty:
        return []
    measurements = []
    for feature in view.features:
        column = features[feature] if feature in features else pd.Series(None, index=features.index)
        labels = {"feature_view": view.name, "model_name": model, "feature": feature}
        measurements.append(Measurement("null_share", float(column.isna().mean()), labels))
        if feature in view.default_values:
            default_share = float((column == view.default_values[feature]).mean())
            measurements.append(Measurement("default_share", default_share, labels))
    return measurements


def latest_materialisations(
    views: list[str], previous: dict[str, float], found: dict[str, datetime | None]
) -> list[Measurement]:
    """Each view's newest materialisation: the newer of what this evaluation found and what the
    previous one exported (a view stale longer than the lookback keeps its old time, so its alert
    stays firing). A view never seen materialised has none, and no staleness alert."""
    measurements = []
    for view in views:
        newest = found.get(view)
        known = [s for s in (previous.get(view), newest.timestamp() if newest else None) if s is not None]
        if known:
            measurements.append(Measurement(MATERIALIZED, max(known), {"feature_view": view}))
    return measurements


def previous_materialisations(
    session: Session, feature_store: str
) -> tuple[dict[str, float], datetime | None]:
    """What the previous evaluation exported for each view, and when its window ended."""
    row = session.get(LatestWindow, (KIND, feature_store, ""))
    if row is None:
        return {}, None
    times = {
        r["labels"]["feature_view"]: float(r["value"]) for r in row.results if r["metric"] == MATERIALIZED
    }
    return times, as_utc(row.window_end)


def newest_served(session: Session, feature_store: str, since: datetime) -> dict[str, datetime | None]:
    """The newest `materialized_at` among each view's lookups since `since`."""
    rows = session.execute(
        select(FeatureLookup.feature_view, func.max(FeatureLookup.materialized_at))
        .where(FeatureLookup.feature_store == feature_store, FeatureLookup.timestamp >= since)
        .group_by(FeatureLookup.feature_view)
    )
    return {view: as_utc(at) if at is not None else None for view, at in rows}


def newest_run_end(session: Session, pipeline: str) -> datetime | None:
    """The end of the pipeline's newest run (any stage) that handled records and did not fail them all."""
    row = session.execute(
        select(PipelineRun.started_at, PipelineRun.duration_seconds)
        .where(PipelineRun.pipeline_name == pipeline, PipelineRun.records > PipelineRun.errors)
        .order_by(PipelineRun.started_at.desc())
        .limit(1)
    ).first()
    return None if row is None else as_utc(row[0]) + timedelta(seconds=row[1])


def found_materialisations(
    session: Session, feature_store: FeatureStore, since: datetime
) -> dict[str, datetime | None]:
    served = newest_served(session, feature_store.name, since)
    found: dict[str, datetime | None] = {}
    for view in feature_store.views:
        ran = newest_run_end(session, view.materialized_by) if view.materialized_by else None
        times = [t for t in (served.get(view.name), ran) if t is not None]
        found[view.name] = max(times, default=None)
    return found


@task(
    retries=2,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
    task_run_name="feature-store-{feature_store.name}",
)
def evaluate_feature_store(
    store: Store, feature_store: FeatureStore, window: Window, sampling: Sampling, flow_run_id: str | None
) -> list[Measurement]:
    with store.reading() as session:
        previous, previous_end = previous_materialisations(session, feature_store.name)
        since = previous_end - LATE_MARGIN if previous_end is not None else window.end - FIRST_LOOKBACK
        found = found_materialisations(session, feature_store, since)
    measurements = latest_materialisations([v.name for v in feature_store.views], previous, found)
    samples: dict[str, pd.DataFrame] = {}  # a model reading several views is sampled once
    for view in feature_store.views:
        for model in view.models:
            if model not in samples:
                samples[model] = window_sample(store, model, window.start, window.end, sampling)[1]
            measurements += served_shares(samples[model], view, model)
    save_results(store, KIND, feature_store.name, "", window, measurements, flow_run_id)
    return measurements
