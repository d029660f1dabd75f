"""Reading the prediction log as feature frames, and a model's reference data."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, text

from watchkeeper.config import FileReference, Model, PeriodReference, SqlReference
from watchkeeper.secrets import resolve_secret
from watchkeeper.store import Store
from watchkeeper.store.buckets import first_bucket
from watchkeeper.store.samples import SAMPLE_FIELDS, Sampling, window_sample

LOG_FIELDS = SAMPLE_FIELDS


def prediction_frame(
    store: Store,
    model_name: str,
    start: datetime,
    end: datetime,
    sampling: Sampling,
    at_most: int | None = None,
) -> pd.DataFrame:
    """The sample of predictions in [start, end) the intake kept (`store/samples.py`): one column
    per feature as sent, plus the log's own fields.

    Feature columns keep the names the model service sent, so missing or unexpected features show
    up in data quality instead of being dropped here. The sample is uniform over the window and
    bounded by the number of buckets whatever the traffic; `at_most` bounds it further (its rows of
    smallest priority, still uniform).
    """
    log, features = window_sample(store, model_name, start, end, sampling)
    if at_most is not None and len(log) > at_most:
        log, features = log.iloc[:at_most], features.iloc[:at_most]
    overlap = [c for c in features.columns if c in log.columns]
    return pd.concat([features.drop(columns=overlap), log], axis=1)


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file, by its suffix."""
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    if suffix in {".csv", ".txt"}:
        return pd.read_csv(path)
    raise ValueError(f"{path}: expected a .csv or .parquet file, got {suffix or 'no suffix'}")


def first_prediction_time(store: Store, model_name: str) -> datetime | None:
    """The start of the first bucket in which the model served a prediction."""
    with store.reading() as session:
        return first_bucket(session, model_name)


def reference_frame(store: Store, model: Model, sampling: Sampling) -> pd.DataFrame:
    """The model's configured reference: a file, a SQL query, or a fixed period of its own log
    (the sample the intake kept of it)."""
    reference = model.reference
    if reference is None:
        raise ValueError(f"model {model.name!r} has no reference configured (models[].reference)")
    if isinstance(reference, FileReference):
        # Not written yet (the demo writes its own at start): no reference, nothing is judged.
        return read_table(reference.path) if reference.path.exists() else pd.DataFrame()
    if isinstance(reference, SqlReference):
        url = resolve_secret(reference.database_url) if reference.database_url else store.url
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                return pd.read_sql_query(text(reference.query), connection)
        finally:
            engine.dispose()
    assert isinstance(reference, PeriodReference)
    start = reference.start or first_prediction_time(store, model.name)
    if start is None:
        return pd.DataFrame()
    return prediction_frame(store, model.name, start, start + reference.duration, sampling)
