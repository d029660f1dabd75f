"""Reading the prediction log as feature frames, and a model's reference data."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, func, select, text

from watchkeeper.config import FileReference, Model, PeriodReference, SqlReference
from watchkeeper.secrets import resolve_secret
from watchkeeper.store import Store
from watchkeeper.store.schema import Prediction

LOG_FIELDS = ["request_id", "model_version", "timestamp", "prediction", "score", "error"]


def prediction_frame(
    store: Store, model_name: str, start: datetime, end: datetime, at_most: int | None = None
) -> pd.DataFrame:
    """Predictions in [start, end): one column per feature as sent, plus the log's own fields.

    Feature columns keep the names the model service sent, so missing or unexpected features show
    up in data quality instead of being dropped here. With `at_most`, a window holding more rows
    is read as a systematic sample of every k-th stored row (by id, so spread evenly over the
    window and the same on every read): memory stays bounded however busy the model is.
    """
    in_window = (
        Prediction.model_name == model_name,
        Prediction.timestamp >= start,
        Prediction.timestamp < end,
    )
    query = select(
        Prediction.request_id,
        Prediction.model_version,
        Prediction.timestamp,
        Prediction.prediction,
        Prediction.score,
        Prediction.error,
        Prediction.features,
    ).where(*in_window)
    with store.reading() as session:
        if at_most is not None:
            stored = session.scalar(select(func.count()).select_from(Prediction).where(*in_window)) or 0
            if stored > at_most:
                query = query.where(Prediction.id % math.ceil(stored / at_most) == 0)
        rows = session.execute(query).all()
    log = pd.DataFrame([row[:-1] for row in rows], columns=LOG_FIELDS)
    features = pd.DataFrame([row[-1] for row in rows], index=log.index)
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


def first_prediction_time(store: Store, model_name: str, version: str | None = None) -> datetime | None:
    """When the model (or one version of it) served its first stored prediction."""
    query = select(func.min(Prediction.timestamp)).where(Prediction.model_name == model_name)
    if version is not None:
        query = query.where(Prediction.model_version == version)
    with store.reading() as session:
        return session.scalar(query)


def reference_frame(store: Store, model: Model) -> pd.DataFrame:
    """The model's configured reference: a file, a SQL query, or a fixed period of its own log."""
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
    return prediction_frame(store, model.name, start, start + reference.duration)
