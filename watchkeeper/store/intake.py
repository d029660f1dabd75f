"""Writing prediction and feedback batches: whole or not at all, and idempotent by request id."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from watchkeeper.records import FeedbackRecord, PredictionRecord
from watchkeeper.store import Store
from watchkeeper.store.schema import Feedback, IntakeCount, Prediction, utcnow

# Keeps each IN (...) list well under SQLite's bound-parameter limit.
LOOKUP_CHUNK = 500
# A concurrent batch may insert the same request id between our look-up and our insert; the
# unique constraint refuses it, and the batch is retried once the other has committed.
MAX_ATTEMPTS = 3
UNKNOWN_VERSION = "unknown"


@dataclass(frozen=True)
class StoredBatch:
    received: int
    stored: int

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


def _chunks(items: Sequence[str], size: int = LOOKUP_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _first_per_request(records: Iterable[Any]) -> dict[tuple[str, str], Any]:
    firsts: dict[tuple[str, str], Any] = {}
    for record in records:
        firsts.setdefault((record.model_name, record.request_id), record)
    return firsts


def _lookup(session: Session, column: Any, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """`column`'s value for each (model_name, request_id) already stored in its table."""
    table = column.class_
    by_model: dict[str, list[str]] = {}
    for model_name, request_id in keys:
        by_model.setdefault(model_name, []).append(request_id)
    found: dict[tuple[str, str], Any] = {}
    for model_name, request_ids in by_model.items():
        for chunk in _chunks(request_ids):
            rows = session.execute(
                select(table.request_id, column).where(
                    table.model_name == model_name, table.request_id.in_(chunk)
                )
            )
            found.update(((model_name, request_id), value) for request_id, value in rows)
    return found


def _add_to_counts(session: Session, kind: str, counts: Counter[tuple[str, str]]) -> None:
    if not counts:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(IntakeCount).values(
        [{"kind": kind, "model_name": m, "model_version": v, "total": n} for (m, v), n in counts.items()]
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["kind", "model_name", "model_version"],
            set_={"total": IntakeCount.total + statement.excluded.total},
        )
    )


def _write_predictions(session: Session, records: Sequence[PredictionRecord]) -> int:
    firsts = _first_per_request(records)
    existing = _lookup(session, Prediction.id, firsts)
    now = utcnow()
    rows = [
        {
            "model_name": r.model_name,
            "model_version": r.model_version,
            "request_id": r.request_id,
            "timestamp": r.timestamp,
            "features": r.features,
            "prediction": r.prediction,
            "score": r.score,
            "latency_seconds": r.latency_seconds,
            "error": r.error,
            "received_at": now,
        }
        for key, r in firsts.items()
        if key not in existing
    ]
    if rows:
        session.execute(Prediction.__table__.insert(), rows)
    _add_to_counts(session, "predictions", Counter((r["model_name"], r["model_version"]) for r in rows))
    return len(rows)


def _write_feedback(session: Session, records: Sequence[FeedbackRecord]) -> int:
    firsts = _first_per_request(records)
    existing = _lookup(session, Feedback.id, firsts)
    new_keys = [key for key in firsts if key not in existing]
    versions = _lookup(session, Prediction.model_version, new_keys)
    now = utcnow()
    rows = [
        {
            "model_name": firsts[key].model_name,
            "request_id": firsts[key].request_id,
            "label": firsts[key].label,
            "business_value": firsts[key].business_value,
            "timestamp": firsts[key].timestamp or now,
            "received_at": now,
        }
        for key in new_keys
    ]
    if rows:
        session.execute(Feedback.__table__.insert(), rows)
    _add_to_counts(
        session, "feedback", Counter((key[0], versions.get(key, UNKNOWN_VERSION)) for key in new_keys)
    )
    return len(rows)


def _store(store: Store, records: Sequence[Any], write: Any) -> StoredBatch:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with store.writing() as session:
                return StoredBatch(received=len(records), stored=write(session, records))
        except IntegrityError:
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def store_predictions(store: Store, records: Sequence[PredictionRecord]) -> StoredBatch:
    return _store(store, records, _write_predictions)


def store_feedback(store: Store, records: Sequence[FeedbackRecord]) -> StoredBatch:
    return _store(store, records, _write_feedback)


def intake_totals(session: Session) -> list[IntakeCount]:
    return list(session.scalars(select(IntakeCount).order_by(IntakeCount.kind, IntakeCount.model_name)))
