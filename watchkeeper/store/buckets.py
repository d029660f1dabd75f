"""Reading and folding the aggregates the intake keeps per model, version and time bucket."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from watchkeeper.store import Store, insert_for
from watchkeeper.store.schema import ModelTally

# measure -> detail -> total, for one model version over one window
Totals = dict[str, Counter[str]]


def window_totals(session: Session, model_name: str, start: datetime, end: datetime) -> dict[str, Totals]:
    """Per model version, the sum of every bucket that starts in [start, end)."""
    rows = session.execute(
        select(ModelTally.model_version, ModelTally.measure, ModelTally.detail, func.sum(ModelTally.total))
        .where(
            ModelTally.model_name == model_name,
            ModelTally.bucket_start >= start,
            ModelTally.bucket_start < end,
        )
        .group_by(ModelTally.model_version, ModelTally.measure, ModelTally.detail)
    )
    found: dict[str, Totals] = defaultdict(lambda: defaultdict(Counter))
    for version, measure, detail, total in rows:
        if total:
            found[version][measure][detail] += total
    return {version: dict(totals) for version, totals in found.items()}


def bucket_totals(
    session: Session, model_name: str, start: datetime, end: datetime
) -> dict[datetime, Totals]:
    """Per bucket that starts in [start, end), the sum over the model's versions."""
    rows = session.execute(
        select(ModelTally.bucket_start, ModelTally.measure, ModelTally.detail, func.sum(ModelTally.total))
        .where(
            ModelTally.model_name == model_name,
            ModelTally.bucket_start >= start,
            ModelTally.bucket_start < end,
        )
        .group_by(ModelTally.bucket_start, ModelTally.measure, ModelTally.detail)
    )
    found: dict[datetime, Totals] = defaultdict(lambda: defaultdict(Counter))
    for bucket, measure, detail, total in rows:
        if total:
            found[bucket][measure][detail] += total
    return {bucket: dict(totals) for bucket, totals in found.items()}


def first_buckets(session: Session, model_name: str) -> dict[str, datetime]:
    """When each version of the model served its first counted prediction (its first bucket)."""
    rows = session.execute(
        select(ModelTally.model_version, func.min(ModelTally.bucket_start))
        .where(ModelTally.model_name == model_name)
        .group_by(ModelTally.model_version)
    )
    return {version: first for version, first in rows}


def fold_model_tallies(store: Store) -> int:
    """Add the intake's unfolded rows into their series' folded row; returns the rows folded.

    The unfolded rows are deleted with RETURNING and summed from what this transaction deleted, so
    two concurrent folds never count a row twice, and the folded row is upserted (ON CONFLICT ...
    DO UPDATE total = total + new), so neither loses the other's sum.
    """
    with store.writing() as session:
        deleted = session.execute(
            delete(ModelTally)
            .where(ModelTally.folded.is_(False))
            .returning(
                ModelTally.model_name,
                ModelTally.model_version,
                ModelTally.bucket_start,
                ModelTally.measure,
                ModelTally.detail,
                ModelTally.total,
            )
        ).all()
        sums: Counter[tuple[str, str, datetime, str, str]] = Counter()
        for model, version, start, measure, detail, total in deleted:
            sums[(model, version, start, measure, detail)] += total
        if sums:
            statement = insert_for(session)(ModelTally)
            series = ["model_name", "model_version", "bucket_start", "measure", "detail"]
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=series,
                    index_where=ModelTally.folded,
                    set_={"total": ModelTally.total + statement.excluded.total},
                ),
                [
                    {
                        "model_name": m,
                        "model_version": v,
                        "bucket_start": b,
                        "measure": measure,
                        "detail": d,
                        "total": n,
                        "folded": True,
                    }
                    for (m, v, b, measure, d), n in sums.items()
                ],
            )
        return len(deleted)
