"""Writing prediction and feedback batches: whole or not at all, and idempotent by request id."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, delete, func, select
from sqlalchemy.orm import Session

from watchkeeper.config import Model
from watchkeeper.intake.checks import ReferenceProfile, class_name, record_failures
from watchkeeper.intake.records import FeedbackRecord, PipelineRunRecord, PredictionRecord
from watchkeeper.store import Store, insert_for
from watchkeeper.store.schema import Feedback, PipelineRun, Prediction, Tally
from watchkeeper.times import utcnow

# Keeps each IN (...) list well under SQLite's bound-parameter limit.
LOOKUP_CHUNK = 500
UNKNOWN_VERSION = "unknown"
INFERENCE_LATENCY = "inference_latency"
PIPELINE_LATENCY = "pipeline_latency"
# Tally families of the intake's own counters (see schema.Tally).
COUNT, BUCKET, SUM = "count:", "bucket:", "sum:"


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


def _lookup(
    session: Session, group: Any, ident: Any, value: Any, keys: Iterable[tuple[str, str]]
) -> list[tuple[tuple[str, str], Any]]:
    """`value` for each stored row whose (`group`, `ident`) is among `keys`, e.g. (model_name, request_id).

    `value` may be a tuple of columns; each found value is then a row of them.
    """
    values = value if isinstance(value, tuple) else (value,)
    by_group: dict[str, list[str]] = {}
    for group_value, ident_value in keys:
        by_group.setdefault(group_value, []).append(ident_value)
    found: list[tuple[tuple[str, str], Any]] = []
    for group_value, idents in by_group.items():
        for chunk in _chunks(idents):
            rows = session.execute(select(ident, *values).where(group == group_value, ident.in_(chunk)))
            found.extend(
                ((group_value, row[0]), row[1:] if isinstance(value, tuple) else row[1]) for row in rows
            )
    return found


def _insert_new(session: Session, table: Table, rows: list[dict[str, Any]], key: Sequence[str]) -> set[tuple]:
    """Insert the rows whose `key` is not stored yet, in one statement (ON CONFLICT DO NOTHING):
    no lookup before, no race with a concurrent writer. Returns the keys it inserted."""
    if not rows:
        return set()
    statement = insert_for(session)(table).on_conflict_do_nothing(index_elements=list(key))
    return {tuple(row) for row in session.execute(statement.returning(*(table.c[k] for k in key)), rows)}


def _add_to_counts(session: Session, kind: str, counts: Counter[tuple[str, str]]) -> None:
    _append_tallies(session, COUNT + kind, {(m, v, ""): n for (m, v), n in counts.items()})


def _append_tallies(
    session: Session, family: str, counts: Mapping[tuple[str, str, str], float], keep_zeros: bool = False
) -> None:
    """One new row per (subject, variant, detail) with a count: no row is shared with another writer."""
    rows = [
        {"family": family, "subject": subject, "variant": variant, "detail": detail, "total": float(n)}
        for (subject, variant, detail), n in counts.items()
        if n or keep_zeros
    ]
    if rows:
        session.execute(Tally.__table__.insert(), rows)


def tally_totals(session: Session) -> list[tuple[str, str, str, str, float]]:
    """(family, subject, variant, detail, total) for every tallied series."""
    series = (Tally.family, Tally.subject, Tally.variant, Tally.detail)
    return [tuple(row) for row in session.execute(select(*series, func.sum(Tally.total)).group_by(*series))]


def fold_tallies(store: Store) -> int:
    """Replace each series' rows by one row with their sum; returns the rows removed.

    The rows are deleted with RETURNING and summed from what this transaction deleted, so two
    concurrent folds never count a row twice, and writers appending meanwhile are not touched.
    """
    with store.writing() as session:
        deleted = session.execute(
            delete(Tally).returning(Tally.family, Tally.subject, Tally.variant, Tally.detail, Tally.total)
        ).all()
        sums: Counter[tuple[str, str, str, str]] = Counter()
        for family, subject, variant, detail, total in deleted:
            sums[(family, subject, variant, detail)] += total
        if sums:
            session.execute(
                Tally.__table__.insert(),
                [
                    {"family": f, "subject": s, "variant": v, "detail": d, "total": n}
                    for (f, s, v, d), n in sums.items()
                ],
            )
        return len(deleted)


def _tally_predictions(
    session: Session,
    rows: Sequence[dict[str, Any]],
    profile_for: Callable[[str], ReferenceProfile | None],
) -> None:
    """Errors and classes per model version; record checks per dataset (data quality's fast path)."""
    errors: Counter[tuple[str, str, str]] = Counter()
    classes: Counter[tuple[str, str, str]] = Counter()
    checked: Counter[tuple[str, str, str]] = Counter()
    failures: Counter[tuple[str, str, str]] = Counter()
    for row in rows:
        model, version = row["model_name"], row["model_version"]
        errors[(model, version, "")] += bool(row["error"])
        reference = profile_for(model)
        if reference is None:
            continue
        if not row["error"] and row["prediction"] is not None:
            classes[(model, version, reference.prediction_class(row["prediction"]))] += 1
        checked[(reference.dataset, "", "")] += 1
        for check, column in record_failures(reference, row["features"]):
            failures[(reference.dataset, check, column)] += 1
    _append_tallies(session, "prediction_errors", errors)
    _append_tallies(session, "predictions_by_class", classes)
    _append_tallies(session, "records_checked", checked)
    _append_tallies(session, "record_check_failures", failures)


def _tally_labels(
    session: Session,
    labelled: Iterable[tuple[FeedbackRecord, str, Any]],
    model_for: Callable[[str], Model | None],
) -> None:
    """Per model version: labelled predictions and misclassified ones; per model: the business value
    of correct positive decisions, as `ai_business_impact_score` counts it."""
    counted: Counter[tuple[str, str, str]] = Counter()
    missed: Counter[tuple[str, str, str]] = Counter()
    value: Counter[tuple[str, str, str]] = Counter()
    for record, version, prediction in labelled:
        model = model_for(record.model_name)
        if model is None:
            continue
        key = (record.model_name, version, "")
        counted[key] += 1
        predicted, actual = class_name(prediction), class_name(record.label)
        missed[key] += predicted != actual
        positive = class_name(model.positive_class)
        if predicted == actual == positive and record.business_value is not None:
            value[(record.model_name, "", model.business_metric)] += record.business_value
    _append_tallies(session, "labelled", counted)
    _append_tallies(session, "misclassified", missed)
    _append_tallies(session, "business_value", value)


def le_text(bound: float) -> str:
    """A bucket's upper bound as stored and exported: `+Inf` for the last."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def histogram_tallies(
    observations: Iterable[tuple[str, str, float]], buckets_for: Callable[[str], Sequence[float]]
) -> tuple[dict[tuple[str, str, str], float], dict[tuple[str, str, str], float]]:
    """Per-bucket counts (each value in the first bucket whose bound is >= it; keyed by subject,
    variant and bound) and per-series `count` and `sum`.

    Every configured bound of a series gets a count, empty or not, so the exported histogram always
    has all its buckets.
    """
    buckets: Counter[tuple[str, str, str]] = Counter()
    sums: Counter[tuple[str, str, str]] = Counter()
    for subject, variant, value in observations:
        bounds = buckets_for(subject)
        if (subject, variant, "count") not in sums:
            buckets.update(dict.fromkeys(((subject, variant, le_text(le)) for le in (*bounds, math.inf)), 0))
        index = bisect.bisect_left(bounds, value)
        buckets[(subject, variant, le_text(bounds[index] if index < len(bounds) else math.inf))] += 1
        sums[(subject, variant, "count")] += 1
        sums[(subject, variant, "sum")] += value
    return buckets, sums


def _add_to_histogram(
    session: Session,
    family: str,
    observations: Iterable[tuple[str, str, float]],
    buckets_for: Callable[[str], Sequence[float]],
) -> None:
    buckets, sums = histogram_tallies(observations, buckets_for)
    _append_tallies(session, BUCKET + family, buckets, keep_zeros=True)
    _append_tallies(session, SUM + family, sums, keep_zeros=True)


def _write_predictions(
    session: Session,
    records: Sequence[PredictionRecord],
    buckets_for: Callable[[str], Sequence[float]],
    profile_for: Callable[[str], ReferenceProfile | None],
) -> int:
    now = utcnow()
    candidates = [
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
        for r in _first_per_request(records).values()
    ]
    inserted = _insert_new(session, Prediction.__table__, candidates, ("model_name", "request_id"))
    rows = [r for r in candidates if (r["model_name"], r["request_id"]) in inserted]
    _add_to_counts(session, "predictions", Counter((r["model_name"], r["model_version"]) for r in rows))
    latencies = ((r["model_name"], r["model_version"], r["latency_seconds"]) for r in rows)
    _add_to_histogram(
        session, INFERENCE_LATENCY, ((m, v, x) for m, v, x in latencies if x is not None), buckets_for
    )
    _tally_predictions(session, rows, profile_for)
    return len(rows)


def _write_feedback(
    session: Session, records: Sequence[FeedbackRecord], model_for: Callable[[str], Model | None]
) -> int:
    firsts = _first_per_request(records)
    now = utcnow()
    candidates = [
        {
            "model_name": record.model_name,
            "request_id": record.request_id,
            "label": record.label,
            "business_value": record.business_value,
            "timestamp": record.timestamp or now,
            "received_at": now,
        }
        for record in firsts.values()
    ]
    inserted = _insert_new(session, Feedback.__table__, candidates, ("model_name", "request_id"))
    new_keys = [key for key in firsts if key in inserted]
    served = dict(
        _lookup(
            session,
            Prediction.model_name,
            Prediction.request_id,
            (Prediction.model_version, Prediction.prediction, Prediction.error),
            new_keys,
        )
    )
    versions = {key: version for key, (version, _, _) in served.items()}
    _add_to_counts(
        session, "feedback", Counter((key[0], versions.get(key, UNKNOWN_VERSION)) for key in new_keys)
    )
    labelled = (
        (firsts[key], version, prediction)
        for key, (version, prediction, error) in served.items()
        if not error and prediction is not None
    )
    _tally_labels(session, labelled, model_for)
    return len(new_keys)


def _write_pipeline_runs(
    session: Session, records: Sequence[PipelineRunRecord], buckets_for: Callable[[str], Sequence[float]]
) -> int:
    firsts: dict[tuple[str, str, str], PipelineRunRecord] = {}
    for record in records:
        firsts.setdefault((record.pipeline_name, record.run_id, record.stage), record)
    now = utcnow()
    candidates = [{**r.model_dump(), "source": "intake", "received_at": now} for r in firsts.values()]
    key = ("pipeline_name", "run_id", "stage")
    inserted = _insert_new(session, PipelineRun.__table__, candidates, key)
    rows = [r for r in candidates if tuple(r[k] for k in key) in inserted]
    durations = ((r["pipeline_name"], r["stage"], r["duration_seconds"]) for r in rows)
    _add_to_histogram(session, PIPELINE_LATENCY, durations, buckets_for)
    return len(rows)


def _store(
    store: Store, records: Sequence[Any], write: Callable[[Session, Sequence[Any]], int]
) -> StoredBatch:
    return StoredBatch(
        received=len(records), stored=store.write_idempotently(lambda session: write(session, records))
    )


def not_configured(_model: str) -> None:
    """No reference profile, no configured model: the intake stores and counts, and checks nothing."""
    return None


def store_predictions(
    store: Store,
    records: Sequence[PredictionRecord],
    latency_buckets: Callable[[str], Sequence[float]],
    profile_for: Callable[[str], ReferenceProfile | None] = not_configured,
) -> StoredBatch:
    """`latency_buckets(model_name)` gives the model's inference latency histogram bounds;
    `profile_for(model_name)` its reference profile, which the records are checked against."""
    # Resolved once per model, before the transaction: no reference is read, nor its file stat'ed,
    # per record or while the batch holds its write lock.
    profiles = {name: profile_for(name) for name in {r.model_name for r in records}}
    return _store(
        store,
        records,
        lambda session, batch: _write_predictions(session, batch, latency_buckets, profiles.get),
    )


def store_feedback(
    store: Store, records: Sequence[FeedbackRecord], model_for: Callable[[str], Model | None] = not_configured
) -> StoredBatch:
    """`model_for(model_name)`: the configured model, whose labelled outcomes are tallied."""
    return _store(store, records, lambda session, batch: _write_feedback(session, batch, model_for))


def store_pipeline_runs(
    store: Store, records: Sequence[PipelineRunRecord], duration_buckets: Callable[[str], Sequence[float]]
) -> StoredBatch:
    """Idempotent by (pipeline_name, run_id, stage); `duration_buckets(pipeline)` bounds its histogram."""
    return _store(
        store, records, lambda session, batch: _write_pipeline_runs(session, batch, duration_buckets)
    )


@dataclass(frozen=True, order=True)
class IntakeTotal:
    """Stored records of one kind for one model version. Feedback counts under the version of the
    prediction it labels (`unknown` when the label arrived first)."""

    kind: str
    model_name: str
    model_version: str
    total: int


def intake_counts(tallies: Iterable[tuple[str, str, str, str, float]]) -> list[IntakeTotal]:
    """The intake's record counts among `tally_totals`' rows."""
    return sorted(
        IntakeTotal(family.removeprefix(COUNT), subject, variant, int(total))
        for family, subject, variant, _detail, total in tallies
        if family.startswith(COUNT)
    )
