"""The drift and data-quality sample: per model and bucket, the `k` predictions with the smallest
request-id priorities (see `watchkeeper.intake.aggregates.BottomK`).

A window's sample is uniform however its traffic varied: with tau the smallest k-th priority of
its full buckets (those with at least k predictions), every prediction of the window whose
priority is at most tau is in its bucket's bottom k, so keeping exactly those is a Bernoulli
sample of the whole window at rate tau / 2^63, the same in every replica and on every read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from watchkeeper.config import WatchkeeperConfig
from watchkeeper.intake.aggregates import bucket_start
from watchkeeper.store import Store
from watchkeeper.store.schema import PredictionSample

SAMPLE_FIELDS = ["request_id", "model_version", "timestamp", "prediction", "score", "error"]


@dataclass(frozen=True)
class Sampling:
    """How the intake samples: `k` predictions per model and bucket of `bucket_seconds`."""

    k: int
    bucket_seconds: int

    @classmethod
    def of(cls, config: WatchkeeperConfig) -> Sampling:
        return cls(config.intake.sample_per_bucket, int(config.intake.bucket.total_seconds()))


def window_sample(
    store: Store, model_name: str, start: datetime, end: datetime, sampling: Sampling
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The uniform sample of [start, end): its log fields (SAMPLE_FIELDS) and its features, one
    column per feature as sent."""
    table, k = PredictionSample, sampling.k
    first = bucket_start(start, sampling.bucket_seconds)
    with store.reading() as session:
        rows = session.execute(
            select(
                table.bucket_start,
                table.priority,
                *(getattr(table, name) for name in SAMPLE_FIELDS),
                table.features,
            ).where(table.model_name == model_name, table.bucket_start >= first, table.bucket_start < end)
        ).all()
    frame = pd.DataFrame([row[:-1] for row in rows], columns=["bucket_start", "priority", *SAMPLE_FIELDS])
    frame["features"] = [row[-1] for row in rows]
    frame = uniform_sample(frame, k)
    frame = frame[(frame["timestamp"] >= start) & (frame["timestamp"] < end)]
    log = frame[SAMPLE_FIELDS].reset_index(drop=True)
    features = pd.DataFrame(list(frame["features"]), index=log.index)
    return log, features


def uniform_sample(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """From rows with `bucket_start` and `priority` (at least each bucket's bottom k), the uniform
    sample of all of them (see the module's docstring), by priority."""
    frame = frame.sort_values("priority").groupby("bucket_start", sort=False).head(k)
    full = frame.groupby("bucket_start")["priority"].agg(["count", "max"])
    full = full[full["count"] >= k]
    return frame[frame["priority"] <= full["max"].min()] if len(full) else frame


def trim_samples(store: Store, k: int, since: datetime) -> int:
    """Delete what the intake wrote beyond the k smallest priorities of each bucket that starts
    from `since`; returns how many. (Readers take the bottom k themselves: an untrimmed older
    bucket costs space, never correctness.)"""
    table = PredictionSample
    with store.reading() as session:
        crowded = session.execute(
            select(table.model_name, table.bucket_start)
            .where(table.bucket_start >= since)
            .group_by(table.model_name, table.bucket_start)
            .having(func.count() > k)
        ).all()
    removed = 0
    for model_name, start in crowded:  # a transaction a bucket: each holds SQLite's write turn briefly
        in_bucket = (table.model_name == model_name, table.bucket_start == start)
        with store.writing() as session:
            kth = session.scalar(
                select(table.priority).where(*in_bucket).order_by(table.priority).offset(k - 1).limit(1)
            )
            removed += session.execute(delete(table).where(*in_bucket, table.priority > kth)).rowcount
    return removed


def traced_examples(
    session: Session,
    model_names: list[str],
    start: datetime,
    end: datetime,
    sampling: Sampling,
    per_kind: int = 3,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each model's slowest and latest failing requests in [start, end) that carry a trace id, from
    the intake's sample (a uniform share of every bucket: the slowest of the sample, not always of
    all requests): {model: {"slowest": [...], "failing": [...]}}, each with its trace id, request
    id, time and latency."""
    table = PredictionSample
    first = bucket_start(start, sampling.bucket_seconds)
    found = {}
    for model_name in model_names:
        traced = select(table.trace_id, table.request_id, table.timestamp, table.latency_seconds).where(
            table.model_name == model_name,
            table.bucket_start >= first,
            table.bucket_start < end,
            table.timestamp >= start,
            table.timestamp < end,
            table.trace_id.is_not(None),
        )
        slowest = traced.where(table.latency_seconds.is_not(None)).order_by(table.latency_seconds.desc())
        failing = traced.where(table.error.is_(True)).order_by(table.timestamp.desc())
        found[model_name] = {
            kind: [
                {
                    "trace_id": trace_id,
                    "request_id": request_id,
                    "at": at.isoformat(),
                    "latency_seconds": latency,
                }
                for trace_id, request_id, at, latency in session.execute(query.limit(per_kind))
            ]
            for kind, query in (("slowest", slowest), ("failing", failing))
        }
    return found
