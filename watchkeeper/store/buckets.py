"""Reading and folding the aggregates the intake keeps per model, version and time bucket."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Table, TextClause, func, select, text, union_all
from sqlalchemy.orm import Session

from watchkeeper.store import Store
from watchkeeper.store.schema import ModelTally, ModelTallyAppend

# measure -> detail -> total, for one model version over one window
Totals = dict[str, Counter[str]]


def _tables(appended: bool) -> tuple[Table, ...]:
    """The folded series, and the rows appended since the last fold unless the caller has just
    folded (the appended rows have no index: each read of them is a scan)."""
    return (ModelTally.__table__, ModelTallyAppend.__table__) if appended else (ModelTally.__table__,)


def _sums(
    session: Session, model_name: str, start: datetime, end: datetime, by: str, appended: bool
) -> dict[Any, Totals]:
    """The model's totals of the buckets that start in [start, end), per value of `by`."""
    rows = union_all(
        *(
            select(table.c[by].label("by"), table.c.measure, table.c.detail, table.c.total).where(
                table.c.model_name == model_name, table.c.bucket_start >= start, table.c.bucket_start < end
            )
            for table in _tables(appended)
        )
    ).subquery()
    found: dict[Any, Totals] = defaultdict(lambda: defaultdict(Counter))
    for key, measure, detail, total in session.execute(
        select(rows.c.by, rows.c.measure, rows.c.detail, func.sum(rows.c.total)).group_by(
            rows.c.by, rows.c.measure, rows.c.detail
        )
    ):
        if total:
            found[key][measure][detail] += total
    return {key: dict(totals) for key, totals in found.items()}


def window_totals(
    session: Session, model_name: str, start: datetime, end: datetime, appended: bool = True
) -> dict[str, Totals]:
    """Per model version, the sum of every bucket that starts in [start, end)."""
    return _sums(session, model_name, start, end, "model_version", appended)


def bucket_totals(
    session: Session, model_name: str, start: datetime, end: datetime
) -> dict[datetime, Totals]:
    """Per bucket that starts in [start, end), the sum over the model's versions."""
    return _sums(session, model_name, start, end, "bucket_start", appended=True)


def first_bucket(
    session: Session, model_name: str, version: str | None = None, appended: bool = True
) -> datetime | None:
    """When the model (or one version of it) served its first counted prediction (its first
    bucket): one seek on the folded series' index, however long the history."""
    firsts = []
    for table in _tables(appended):
        query = select(func.min(table.c.bucket_start)).where(table.c.model_name == model_name)
        if version is not None:
            query = query.where(table.c.model_version == version)
        firsts.append(session.scalar(query))
    return min((first for first in firsts if first is not None), default=None)


SERIES = "model_name, model_version, bucket_start, measure, detail"
_ADD_FOLDED = f"ON CONFLICT ({SERIES}) DO UPDATE SET total = model_tallies.total + excluded.total"
# PostgreSQL: the rows this statement deletes are the rows it sums (a concurrent fold waits on their
# row locks, then skips them), so no row is counted twice or lost.
_FOLD_POSTGRESQL = text(
    f"""WITH moved AS (DELETE FROM model_tally_appends RETURNING {SERIES}, total),
    added AS (
        INSERT INTO model_tallies ({SERIES}, total)
        SELECT {SERIES}, sum(total) FROM moved GROUP BY {SERIES}
        {_ADD_FOLDED}
    )
    SELECT count(*) FROM moved"""
)
# SQLite: writers hold the database's write lock for the whole transaction (BEGIN IMMEDIATE), so
# the rows summed are the rows deleted.
_SUM_SQLITE = text(
    f"""INSERT INTO model_tallies ({SERIES}, total)
    SELECT {SERIES}, sum(total) FROM model_tally_appends WHERE id BETWEEN :first AND :last GROUP BY {SERIES}
    {_ADD_FOLDED}"""
)
_DELETE_SQLITE = text("DELETE FROM model_tally_appends WHERE id BETWEEN :first AND :last")


def fold_model_tallies(store: Store) -> int:
    """Add the intake's appended rows into their series' folded row, in the database; returns the
    rows folded. Concurrent folds, and writers appending meanwhile, lose and double nothing."""
    if store.is_sqlite:
        return fold_in_chunks(store, ModelTallyAppend.__table__, _SUM_SQLITE, _DELETE_SQLITE)
    with store.writing() as session:
        return int(session.execute(_FOLD_POSTGRESQL).scalar_one())


# Appended rows folded in one SQLite transaction at most: a fold holds the write turn, and acting
# on an alert waits for it (fifty models at 5,000 predictions a second append about 130,000 rows
# between two collection cycles, half a second of folding in one transaction).
FOLD_CHUNK = 20_000


def fold_in_chunks(store: Store, appends: Table, add: TextClause, delete: TextClause) -> int:
    """SQLite: fold the rows appended until now, by id, `FOLD_CHUNK` a transaction (each sums the
    rows it deletes); rows appended meanwhile wait for the next fold. Returns the rows folded."""
    with store.reading() as session:
        first, last = session.execute(select(func.min(appends.c.id), func.max(appends.c.id))).one()
    folded = 0
    while first is not None and first <= last:
        chunk = {"first": first, "last": min(last, first + FOLD_CHUNK - 1)}
        with store.writing() as session:
            session.execute(add, chunk)
            folded += session.execute(delete, chunk).rowcount
        first = chunk["last"] + 1
    return folded
