"""Writing prediction and feedback batches: whole or not at all, and idempotent by request id."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Table, and_, delete, func, select, text
from sqlalchemy.orm import Session

from watchkeeper.config import (
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_SAMPLE_PER_BUCKET,
    Model,
    WatchkeeperConfig,
    Windows,
)
from watchkeeper.intake.aggregates import (
    PRIORITY_SPACE,
    BottomK,
    BucketTotals,
    Served,
    in_sample,
    outcome_class,
    outcome_of,
    request_key,
    request_priority,
    served,
)
from watchkeeper.intake.checks import ReferenceProfile, record_failures
from watchkeeper.intake.kinds import (
    BINARY,
    MULTICLASS,
    RANKING,
    REGRESSION,
    earns_business_value,
    feedback_relevance,
    multiclass_class,
    regression_error,
)
from watchkeeper.intake.records import (
    FeatureLookupRecord,
    FeedbackRecord,
    PipelineRunRecord,
    PredictionRecord,
)
from watchkeeper.store import Store
from watchkeeper.store.buckets import fold_in_chunks
from watchkeeper.store.bulk import ConvertedRows, convert_rows, driver_keys, driver_rows, insert_rows, one_of
from watchkeeper.store.schema import (
    EpochSeconds,
    FeatureLookup,
    Feedback,
    ModelTallyAppend,
    PipelineRun,
    Prediction,
    PredictionKey,
    PredictionSample,
    Tally,
    WaitingLabel,
)
from watchkeeper.times import utcnow

# Keeps each IN (...) list well under SQLite's bound-parameter limit.
LOOKUP_CHUNK = 500
# A label and its prediction written at the same moment by two PostgreSQL transactions each miss
# the other (neither sees the other's uncommitted row); the collection joins the labels that
# arrived this recently and whose prediction is now among the keys.
CONCURRENT_JOIN_MARGIN = timedelta(minutes=10)
UNKNOWN_VERSION = "unknown"
T = TypeVar("T")
INFERENCE_LATENCY = "inference_latency"
PIPELINE_LATENCY = "pipeline_latency"
FEATURE_LOOKUP_LATENCY = "feature_lookup_latency"
FEATURE_KEYS = "feature_keys"
FEATURE_KEY_ERRORS = "feature_key_errors"
PIPELINE_RECORDS = "pipeline_records"
PIPELINE_RECORD_ERRORS = "pipeline_record_errors"
PREDICTION_FIELDS = (
    "model_name",
    "model_version",
    "request_id",
    "timestamp",
    "features",
    "prediction",
    "score",
    "latency_seconds",
    "error",
)
# A batch's reference profiles, by model (None: no reference).
Profiles = Callable[[str], ReferenceProfile | None]
# Keys (model, request id) to their hashes (`aggregates.request_key`), computed once a batch.
Hashed = Mapping[tuple[str, str], bytes]
# A sample row's primary key: of two predictions of a bucket whose priorities collide, the first stays.
SAMPLE_KEY = tuple(c.name for c in PredictionSample.__table__.primary_key)
# Tally families of the intake's own counters (see schema.Tally).
COUNT, BUCKET, SUM = "count:", "bucket:", "sum:"


@dataclass(frozen=True)
class StoredBatch:
    received: int
    stored: int

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


def _chunks(items: Sequence[T], size: int = LOOKUP_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _first_per_request(records: Iterable[Any]) -> dict[tuple[str, str], Any]:
    firsts: dict[tuple[str, str], Any] = {}
    for record in records:
        firsts.setdefault((record.model_name, record.request_id), record)
    return firsts


class TallyRows:
    """The Prometheus tallies of one intake transaction, appended together by one INSERT at its end:
    one new row per series and transaction, so no row is shared with another writer."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, family: str, counts: Mapping[tuple[str, str, str], float]) -> None:
        """A row per (subject, variant, detail) with a count other than 0."""
        self.rows.extend(
            {"family": family, "subject": subject, "variant": variant, "detail": detail, "total": float(n)}
            for (subject, variant, detail), n in counts.items()
            if n
        )

    def count(self, kind: str, counts: Counter[tuple[str, str]]) -> None:
        """Records stored, per model and version."""
        self.add(COUNT + kind, {(m, v, ""): n for (m, v), n in counts.items()})

    def histogram(
        self,
        family: str,
        observations: Iterable[tuple[str, str, float]],
        buckets_for: Callable[[str], Sequence[float]],
    ) -> None:
        buckets, sums = histogram_tallies(observations, buckets_for)
        self.add(BUCKET + family, buckets)
        self.add(SUM + family, sums)

    def write(self, session: Session) -> None:
        insert_rows(session, Tally.__table__, self.rows)


def tally_totals(session: Session) -> list[tuple[str, str, str, str, float]]:
    """(family, subject, variant, detail, total) for every tallied series."""
    series = (Tally.family, Tally.subject, Tally.variant, Tally.detail)
    return [tuple(row) for row in session.execute(select(*series, func.sum(Tally.total)).group_by(*series))]


_TALLY_SERIES = "family, subject, variant, detail"
# PostgreSQL: the rows deleted are the rows summed; a concurrent fold waits on their locks, then
# skips them, and writers appending meanwhile are untouched.
_FOLD_TALLIES_POSTGRESQL = text(
    f"""WITH moved AS (DELETE FROM tallies RETURNING {_TALLY_SERIES}, total),
    added AS (
        INSERT INTO tallies ({_TALLY_SERIES}, total)
        SELECT {_TALLY_SERIES}, sum(total) FROM moved GROUP BY {_TALLY_SERIES}
    )
    SELECT count(*) FROM moved"""
)
# SQLite: under the write lock (BEGIN IMMEDIATE) nothing appends between the two statements. The
# sums are appended (new ids), so a later chunk of the same fold does not take them again.
_SUM_TALLIES_SQLITE = text(
    f"""INSERT INTO tallies ({_TALLY_SERIES}, total)
    SELECT {_TALLY_SERIES}, sum(total) FROM tallies WHERE id BETWEEN :first AND :last
    GROUP BY {_TALLY_SERIES}"""
)
_DELETE_TALLIES_SQLITE = text("DELETE FROM tallies WHERE id BETWEEN :first AND :last")


def fold_tallies(store: Store) -> int:
    """Replace each series' rows by one row with their sum (on SQLite, one row a series and chunk
    of `FOLD_CHUNK` rows), in the database; returns the rows removed. Two concurrent folds never
    count a row twice, and writers appending meanwhile are not touched."""
    if store.is_sqlite:
        return fold_in_chunks(store, Tally.__table__, _SUM_TALLIES_SQLITE, _DELETE_TALLIES_SQLITE)
    with store.writing() as session:
        return int(session.execute(_FOLD_TALLIES_POSTGRESQL).scalar_one())


def predicted_class(
    prediction: object, reference: ReferenceProfile | None, model: Model | None
) -> str | None:
    """The class label a prediction is counted under in `predictions_by_class`: bounded by the
    configured classes (multiclass) or the reference's (binary, only with a reference); None for a
    regression model."""
    if model is not None and model.task == MULTICLASS:
        return multiclass_class(prediction, model)
    if reference is None or (model is not None and model.task in (REGRESSION, RANKING)):
        return None
    return reference.prediction_class(prediction)


def _tally_predictions(
    tallies: TallyRows,
    records: Sequence[PredictionRecord],
    profile_for: Callable[[str], ReferenceProfile | None],
    model_for: Callable[[str], Model | None],
) -> None:
    """Errors and classes per model version; record checks per dataset (data quality's fast path)."""
    errors: Counter[tuple[str, str, str]] = Counter()
    classes: Counter[tuple[str, str, str]] = Counter()
    checked: Counter[tuple[str, str, str]] = Counter()
    failures: Counter[tuple[str, str, str]] = Counter()
    for record in records:
        model, version = record.model_name, record.model_version
        errors[(model, version, "")] += bool(record.error)
        reference = profile_for(model)
        if not record.error and record.prediction is not None:
            predicted = predicted_class(record.prediction, reference, model_for(model))
            if predicted is not None:
                classes[(model, version, predicted)] += 1
        if reference is None:
            continue
        checked[(reference.dataset, "", "")] += 1
        for check, column in record_failures(reference, record.features):
            failures[(reference.dataset, check, column)] += 1
    tallies.add("prediction_errors", errors)
    tallies.add("predictions_by_class", classes)
    tallies.add("records_checked", checked)
    tallies.add("record_check_failures", failures)


def _tally_labels(
    tallies: TallyRows,
    labelled: Iterable[tuple[str, str, str, str, float | None]],
    model_for: Callable[[str], Model | None],
) -> None:
    """Per model version: labelled predictions and misclassified ones, and a regression model's
    errors above and below its labels (two counters: their difference is its bias, their sum its
    absolute error, over any window of labels); per model: the business value
    of correct positive decisions (any correct decision for a multiclass model, every labelled
    prediction for a regression model), as `ai_business_impact_score` counts it. `labelled` holds
    (model, version, predicted class, actual class, business value)."""
    counted: Counter[tuple[str, str, str]] = Counter()
    missed: Counter[tuple[str, str, str]] = Counter()
    value: Counter[tuple[str, str, str]] = Counter()
    over: Counter[tuple[str, str, str]] = Counter()
    under: Counter[tuple[str, str, str]] = Counter()
    for model_name, version, predicted, actual, business_value in labelled:
        model = model_for(model_name)
        if model is None:
            continue
        key = (model_name, version, "")
        counted[key] += 1
        missed[key] += model.task in (BINARY, MULTICLASS) and predicted != actual
        error = regression_error(predicted, actual) if model.task == REGRESSION else None
        if error is not None:
            over[key] += max(error, 0.0)
            under[key] += max(-error, 0.0)
        if business_value is not None and earns_business_value(model, predicted, actual):
            value[(model_name, "", model.business_metric)] += business_value
    tallies.add("labelled", counted)
    tallies.add("misclassified", missed)
    tallies.add("overprediction", over)
    tallies.add("underprediction", under)
    tallies.add("business_value", value)


def le_text(bound: float) -> str:
    """A bucket's upper bound as stored and exported: `+Inf` for the last."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def histogram_tallies(
    observations: Iterable[tuple[str, str, float]], buckets_for: Callable[[str], Sequence[float]]
) -> tuple[dict[tuple[str, str, str], float], dict[tuple[str, str, str], float]]:
    """Per-bucket counts (each value in the first bucket whose bound is >= it; keyed by subject,
    variant and bound) and per-series `count` and `sum`. Only the buckets hit get a count: `/metrics`
    exports every configured bound (`histogram_bounds`), so a transaction writes no empty ones (at
    fifty models, a dozen rows a model and transaction)."""
    buckets: Counter[tuple[str, str, str]] = Counter()
    sums: Counter[tuple[str, str, str]] = Counter()
    for subject, variant, value in observations:
        bounds = buckets_for(subject)
        index = bisect.bisect_left(bounds, value)
        buckets[(subject, variant, le_text(bounds[index] if index < len(bounds) else math.inf))] += 1
        sums[(subject, variant, "count")] += 1
        sums[(subject, variant, "sum")] += value
    return buckets, sums


def not_configured(_model: str) -> None:
    """No reference profile, no configured model: the intake stores and counts, and checks nothing."""
    return None


@dataclass(frozen=True)
class IntakeRules:
    """What the intake needs to know of the configuration to store and count a batch."""

    latency_buckets: Callable[[str], Sequence[float]] = lambda _model: DEFAULT_LATENCY_BUCKETS
    profile_for: Callable[[str], ReferenceProfile | None] = not_configured
    model_for: Callable[[str], Model | None] = not_configured
    bucket_seconds: int = 60
    raw_fraction: float = 1.0
    sampler: BottomK = field(default_factory=lambda: BottomK(DEFAULT_SAMPLE_PER_BUCKET))

    def task_of(self, model_name: str) -> str:
        model = self.model_for(model_name)
        return model.task if model is not None else BINARY

    def label_horizon(self, model_name: str) -> timedelta:
        """How long after its arrival a prediction of this model can still be joined by a label."""
        model = self.model_for(model_name)
        return (model.windows if model else Windows()).label_horizon

    @classmethod
    def of(
        cls, config: WatchkeeperConfig, profile_for: Callable[[str], ReferenceProfile | None]
    ) -> IntakeRules:
        models = {m.name: m for m in config.models}
        return cls(
            latency_buckets=lambda name: models[name].latency_buckets,
            profile_for=profile_for,
            model_for=models.get,
            bucket_seconds=int(config.intake.bucket.total_seconds()),
            raw_fraction=config.intake.raw_predictions,
            sampler=BottomK(config.intake.sample_per_bucket),
        )


DEFAULT_RULES = IntakeRules()


@dataclass(frozen=True)
class PreparedPredictions:
    """A batch of predictions as its transaction writes them, worked out before the transaction
    takes the write turn: on SQLite every other writer (acting on an alert among them) waits while
    the turn is held, and the intake's Python work was most of that time. The aggregates count every
    prediction as new, which they are unless the batch is a re-send; rows are converted for the
    store's back end already."""

    firsts: dict[tuple[str, str], PredictionRecord]
    facts: dict[tuple[str, str], Served]
    hashes: dict[tuple[str, str], bytes]  # each key's `request_key`
    key_rows: ConvertedRows
    raw_rows: KeyedRows
    sample_rows: KeyedRows
    bucket_rows: ConvertedRows
    tally_rows: ConvertedRows


@dataclass(frozen=True)
class KeyedRows:
    """Rows of one table, a prediction's each (`keys`), as written if every prediction is new."""

    keys: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    converted: ConvertedRows

    @classmethod
    def of(cls, store: Store, table: Table, rows: dict[tuple[str, str], dict[str, Any]]) -> KeyedRows:
        values = list(rows.values())
        return cls(list(rows), values, convert_rows(store.engine.dialect, table, values))

    def new(self, inserted: Collection[tuple[str, str]], every: bool) -> ConvertedRows | list[dict[str, Any]]:
        """The rows of the predictions `inserted` (`every`: all of them were)."""
        if every:
            return self.converted
        return [row for key, row in zip(self.keys, self.rows, strict=True) if key in inserted]


def _prepare_predictions(
    records: Sequence[PredictionRecord], rules: IntakeRules, profile_for: Profiles, store: Store
) -> PreparedPredictions:
    now, dialect = utcnow(), store.engine.dialect
    firsts = _first_per_request(records)
    losses = expected_losses(firsts, profile_for)
    classes = expected_classes(firsts, profile_for)
    facts = {
        key: served(
            r,
            rules.bucket_seconds,
            profile_for(r.model_name),
            rules.model_for(r.model_name),
            losses.get(key),
            classes.get(key, ()),
        )
        for key, r in firsts.items()
    }
    keys = [f.key_row(now) for f in facts.values()]
    priorities = {key: request_priority(key[1]) for key in firsts}
    raw_below = rules.raw_fraction * PRIORITY_SPACE
    raw = {
        key: _raw_row(r, now)
        for key, r in firsts.items()
        if rules.raw_fraction >= 1.0 or priorities[key] < raw_below
    }
    # Admitted before the write: a re-sent prediction admitted again is in the store already, so the
    # sample stays a superset of each bucket's bottom k (BottomK).
    admitted = rules.sampler.admit(
        str(store.engine.url), ((key[0], facts[key].bucket_start, priorities[key]) for key in firsts)
    )
    sampled = {
        key: _sample_row(r, facts[key].bucket_start, priorities[key])
        for (key, r), admit in zip(firsts.items(), admitted, strict=True)
        if admit
    }
    buckets, tallies = _prediction_aggregates(list(firsts.values()), facts, rules, profile_for)
    return PreparedPredictions(
        firsts,
        facts,
        {key: row["key"] for key, row in zip(facts, keys, strict=True)},
        convert_rows(dialect, PredictionKey.__table__, keys),
        KeyedRows.of(store, Prediction.__table__, raw),
        KeyedRows.of(store, PredictionSample.__table__, sampled),
        convert_rows(dialect, ModelTallyAppend.__table__, buckets.rows()),
        convert_rows(dialect, Tally.__table__, tallies.rows),
    )


def _prediction_aggregates(
    records: Sequence[PredictionRecord],
    facts: Mapping[tuple[str, str], Served],
    rules: IntakeRules,
    profile_for: Callable[[str], ReferenceProfile | None],
) -> tuple[BucketTotals, TallyRows]:
    """The aggregates and Prometheus tallies `records` add."""
    buckets = BucketTotals()
    for r in records:
        buckets.prediction(facts[(r.model_name, r.request_id)], r.latency_seconds)
    tallies = TallyRows()
    tallies.count("predictions", Counter((r.model_name, r.model_version) for r in records))
    latencies = ((r.model_name, r.model_version, r.latency_seconds) for r in records)
    tallies.histogram(
        INFERENCE_LATENCY, ((m, v, x) for m, v, x in latencies if x is not None), rules.latency_buckets
    )
    _tally_predictions(tallies, records, profile_for, rules.model_for)
    return buckets, tallies


def _write_predictions(
    session: Session,
    prepared: PreparedPredictions,
    rules: IntakeRules,
    profile_for: Callable[[str], ReferenceProfile | None],
) -> set[tuple[str, str]]:
    """New request ids become keys (a re-sent one is a duplicate), their aggregates are added to
    their buckets, and the sampled share of them is kept as raw rows. Returns the keys stored."""
    firsts, facts, hashes = prepared.firsts, prepared.facts, prepared.hashes
    stored = insert_rows(session, PredictionKey.__table__, prepared.key_rows, ("key",))
    inserted = {key for key, hashed in hashes.items() if (hashed,) in stored}
    new = [firsts[key] for key in firsts if key in inserted]
    every = len(new) == len(firsts)
    insert_rows(
        session, Prediction.__table__, prepared.raw_rows.new(inserted, every), ("model_name", "request_id")
    )
    insert_rows(session, PredictionSample.__table__, prepared.sample_rows.new(inserted, every), SAMPLE_KEY)
    if every:
        insert_rows(session, ModelTallyAppend.__table__, prepared.bucket_rows)
        insert_rows(session, Tally.__table__, prepared.tally_rows)
    else:  # a re-sent batch: only its new predictions count
        buckets, counted = _prediction_aggregates(new, facts, rules, profile_for)
        insert_rows(session, ModelTallyAppend.__table__, buckets.rows())
        counted.write(session)
    joined, tallies = BucketTotals(), TallyRows()
    new_hashes = {hashes[key]: key for key in inserted}
    _join_waiting(session, new_hashes, rules, profile_for, joined, tallies)
    _append_bucket_totals(session, joined)
    tallies.write(session)
    return inserted


def _served_by_model(
    records: Mapping[tuple[str, str], PredictionRecord], models: Collection[str]
) -> dict[str, list[tuple[str, str]]]:
    """The keys of the served predictions of `models`, by model."""
    found: dict[str, list[tuple[str, str]]] = {}
    for key, record in records.items():
        if key[0] in models and not record.error and record.prediction is not None:
            found.setdefault(key[0], []).append(key)
    return found


def expected_losses(
    records: Mapping[tuple[str, str], PredictionRecord], profile_for: Callable[[str], ReferenceProfile | None]
) -> dict[tuple[str, str], float]:
    """Each served prediction's expected absolute error, for the regression models whose reference
    gave a loss model (`intake/loss.py`); one call of the loss model per model in the batch."""
    losses = {}
    for name in {model for model, _ in records}:
        profile = profile_for(name)
        if profile is not None and profile.loss is not None:
            losses[name] = profile.loss
    if not losses:
        return {}
    found: dict[tuple[str, str], float] = {}
    for model_name, keys in _served_by_model(records, losses).items():
        chosen = [records[key] for key in keys]
        expected = losses[model_name].expected([r.features for r in chosen], [r.prediction for r in chosen])
        found.update(zip(keys, map(float, expected), strict=True))
    return found


def expected_classes(
    records: Mapping[tuple[str, str], PredictionRecord], profile_for: Callable[[str], ReferenceProfile | None]
) -> dict[tuple[str, str], tuple[tuple[str, float], ...]]:
    """Each scored multiclass prediction's calibrated class probabilities (`class_estimation.py`),
    as (class, probability) pairs above zero; one calibration per model in the batch."""
    calibrations = {}
    for name in {key[0] for key, record in records.items() if record.scores is not None}:
        profile = profile_for(name)
        if profile is not None and profile.classes is not None:
            calibrations[name] = profile.classes
    if not calibrations:
        return {}
    found: dict[tuple[str, str], tuple[tuple[str, float], ...]] = {}
    for model_name, keys in _served_by_model(records, calibrations).items():
        scored = [key for key in keys if records[key].scores is not None]
        calibration = calibrations[model_name]
        probabilities = calibration.probabilities([records[key].scores for key in scored])
        for key, row in zip(scored, probabilities, strict=True):
            # Rounded as the key row keeps them, so that a label takes out exactly what was added.
            pairs = ((c, float(f"{p:.6g}")) for c, p in zip(calibration.classes, row, strict=True))
            found[key] = tuple((c, p) for c, p in pairs if p > 0)
    return found


def _raw_row(record: PredictionRecord, received_at: datetime) -> dict[str, Any]:
    return {
        "model_name": record.model_name,
        "model_version": record.model_version,
        "request_id": record.request_id,
        "timestamp": record.timestamp,
        "features": record.features,
        "prediction": record.prediction,
        "score": record.score,
        "latency_seconds": record.latency_seconds,
        "error": record.error,
        "received_at": received_at,
    }


def _sample_row(record: PredictionRecord, start: datetime, priority: int) -> dict[str, Any]:
    return {
        "model_name": record.model_name,
        "model_version": record.model_version,
        "request_id": record.request_id,
        "bucket_start": start,
        "priority": priority,
        "timestamp": record.timestamp,
        "features": record.features,
        "prediction": record.prediction,
        "score": record.score,
        "error": record.error,
        "latency_seconds": record.latency_seconds,
        "trace_id": record.trace_id,
    }


def _append_bucket_totals(
    session: Session, buckets: BucketTotals, appends: Table = ModelTallyAppend.__table__
) -> None:
    insert_rows(session, appends, buckets.rows())


# What a label's join reads of its prediction's key row (`Served.from_key_row`).
_JOIN_COLUMNS = tuple(c.name for c in PredictionKey.__table__.c if c.name not in ("labelled", "received_at"))
# What a labelled key no longer needs, as the claim's SET clears it: the join facts that may be null.
_CLEARED = "".join(f", {name} = NULL" for name in _JOIN_COLUMNS if PredictionKey.__table__.c[name].nullable)


_EPOCH = EpochSeconds()  # how `received_at` and `bucket_start` hold a time


@lru_cache(maxsize=4096)
def _epoch_time(seconds: int) -> datetime | None:
    """A time as `EpochSeconds` reads it; a batch's key rows share a few bucket starts."""
    return _EPOCH.process_result_value(seconds, None)


def _since(horizon: timedelta) -> int | None:
    """The oldest arrival a label can still join, as `received_at` holds it."""
    return _EPOCH.process_bind_param(utcnow() - horizon, None)


def _by_horizon(hashed: Hashed, rules: IntakeRules) -> dict[timedelta, dict[tuple[str, str], bytes]]:
    found: dict[timedelta, dict[tuple[str, str], bytes]] = {}
    for key, hash_ in hashed.items():
        found.setdefault(rules.label_horizon(key[0]), {})[key] = hash_
    return found


def _claim(
    session: Session, hashed: Hashed, rules: IntakeRules, read: Collection[tuple[str, str]] = ()
) -> set[tuple[str, str]]:
    """Mark the keys' predictions labelled (compare-and-set: only those not labelled yet, and within
    their model's label horizon); returns the keys claimed. One statement per label horizon and
    chunk, whatever the number of models in the batch; the driver's own, since SQLAlchemy's
    expanding IN costs more than the update.

    A labelled key is kept only to recognise a re-sent prediction or label: the claim of a key whose
    join facts were `read` clears them (`_CLEARED`), and the row shrinks to its key, version and
    times (for a ranking or multiclass model, its ranked list or probabilities too)."""
    claimed: set[tuple[str, str]] = set()
    for horizon, same_horizon in _by_horizon(hashed, rules).items():
        for clear in (True, False):
            part = {key: hash_ for key, hash_ in same_horizon.items() if (key in read) == clear}
            for hashes in _hashed_chunks(part):
                match, one, parameters = driver_keys(session, list(hashes))
                statement = (
                    f"UPDATE prediction_keys SET labelled = true{_CLEARED if clear else ''} WHERE key {match}"
                    f" AND labelled = false AND received_at >= {one} RETURNING key"
                )
                rows = driver_rows(session, statement, [*parameters, _since(horizon)])
                claimed.update(hashes[bytes(key)] for (key,) in rows)
    return claimed


def _key_facts(
    session: Session, hashed: Hashed, rules: IntakeRules, unlabelled: bool = False
) -> dict[tuple[str, str], Served]:
    """What the labels' join needs of the keys' predictions (`unlabelled`: of those not labelled yet
    and within their model's label horizon, the ones a claim would take)."""
    found: dict[tuple[str, str], Served] = {}
    task_of = rules.task_of
    for horizon, same_horizon in _by_horizon(hashed, rules).items():
        for hashes in _hashed_chunks(same_horizon):
            match, one, parameters = driver_keys(session, list(hashes))
            statement = f"SELECT {', '.join(_JOIN_COLUMNS)} FROM prediction_keys WHERE key {match}"
            if unlabelled:
                statement += f" AND labelled = false AND received_at >= {one}"
                parameters.append(_since(horizon))
            for row in driver_rows(session, statement, parameters):
                values = dict(zip(_JOIN_COLUMNS, row, strict=True))
                values["bucket_start"] = _epoch_time(values["bucket_start"])
                model, request_id = hashes[bytes(values["key"])]
                found[(model, request_id)] = Served.from_key_row(values, model, request_id, task_of(model))
    return found


def _claim_keys(session: Session, hashed: Hashed, rules: IntakeRules) -> dict[tuple[str, str], Served]:
    """Claim the keys (`_claim`) and return what their labels' join needs."""
    read = _key_facts(session, hashed, rules, unlabelled=True)
    return _claimed_facts(session, _claim(session, hashed, rules, read.keys()), read, hashed, rules)


def _claimed_facts(
    session: Session,
    claimed: set[tuple[str, str]],
    read: Mapping[tuple[str, str], Served],
    hashed: Hashed,
    rules: IntakeRules,
) -> dict[tuple[str, str], Served]:
    """The join facts of the claimed keys: as `read` before the claim (a key row changes only when it
    is labelled), and read now for those stored since (their claim kept the facts)."""
    unread = {key: hashed[key] for key in claimed if key not in read}
    facts = {**read, **(_key_facts(session, unread, rules) if unread else {})}
    return {key: facts[key] for key in claimed}


def _hashed_chunks(hashed: Hashed) -> Iterator[dict[bytes, tuple[str, str]]]:
    """The keys in chunks an IN (...) list can hold, as each key's hash to the key."""
    for chunk in _chunks(list(hashed.items())):
        yield {hash_: key for key, hash_ in chunk}


def _labelled_keys(session: Session, hashed: Hashed) -> set[tuple[str, str]]:
    """The keys whose prediction is labelled already: a label of one is a duplicate. A key stored
    but not labelled, that the claim did not find, was committed by a prediction's intake after the
    claim read: its label waits, and the collection's join counts it (`join_waiting_labels`)."""
    table = PredictionKey.__table__
    found: set[tuple[str, str]] = set()
    for hashes in _hashed_chunks(hashed):
        rows = session.execute(
            select(table.c.key).where(one_of(session, table.c.key, list(hashes)), table.c.labelled.is_(True))
        )
        found.update(hashes[key] for (key,) in rows)
    return found


def _count_labels(
    joined: Iterable[tuple[FeedbackRecord, Served]],
    rules: IntakeRules,
    profile_for: Callable[[str], ReferenceProfile | None],
    buckets: BucketTotals,
    tallies: TallyRows,
) -> None:
    """A joined label's aggregates, in its prediction's bucket, and its Prometheus tallies."""
    outcomes = []
    ndcg: Counter[tuple[str, str, str]] = Counter()
    for record, facts in joined:
        model = rules.model_for(record.model_name)
        actual = outcome_of(record.label, profile_for(record.model_name), model)
        if model is not None and model.task == RANKING:
            relevance = feedback_relevance(record.label)  # type: ignore[arg-type]
            found = buckets.ranking_label(facts, relevance, model.ranking.k, record.business_value)
            ndcg[(record.model_name, facts.model_version, "")] += found.get(f"ndcg@{model.ranking.k[0]}", 0.0)
        else:
            buckets.label(facts, actual, record.business_value)
        if facts.predicted is not None:
            outcomes.append(
                (record.model_name, facts.model_version, facts.predicted, actual, record.business_value)
            )
    _tally_labels(tallies, outcomes, rules.model_for)
    tallies.add("ndcg_sum", ndcg)


@dataclass(frozen=True)
class PreparedFeedback:
    """A batch of labels as its transaction writes them, worked out before the transaction takes the
    write turn (see `PreparedPredictions`): the key rows of their predictions not labelled yet, read
    outside it (a key row changes only when it is labelled), and the labels' aggregates counted as
    if each of those keys is claimed, which it is unless another writer labelled it meanwhile."""

    firsts: dict[tuple[str, str], FeedbackRecord]
    hashed: dict[tuple[str, str], bytes]  # each key's `request_key`
    read: dict[tuple[str, str], Served]
    bucket_rows: ConvertedRows
    tally_rows: ConvertedRows


def _prepare_feedback(
    records: Sequence[FeedbackRecord], rules: IntakeRules, profile_for: Profiles, store: Store
) -> PreparedFeedback:
    firsts = _first_per_request(records)
    hashed = {key: request_key(*key) for key in firsts}
    with store.reading() as session:
        read = _key_facts(session, hashed, rules, unlabelled=True)
    buckets, tallies = _label_aggregates(firsts, read, rules, profile_for)
    dialect = store.engine.dialect
    return PreparedFeedback(
        firsts,
        hashed,
        read,
        convert_rows(dialect, ModelTallyAppend.__table__, buckets.rows()),
        convert_rows(dialect, Tally.__table__, tallies.rows),
    )


def _label_aggregates(
    firsts: Mapping[tuple[str, str], FeedbackRecord],
    joined: Mapping[tuple[str, str], Served],
    rules: IntakeRules,
    profile_for: Profiles,
) -> tuple[BucketTotals, TallyRows]:
    """The aggregates and tallies of the labels of the `joined` predictions."""
    buckets, tallies = BucketTotals(), TallyRows()
    _count_labels(
        ((firsts[key], facts) for key, facts in joined.items()), rules, profile_for, buckets, tallies
    )
    tallies.count("feedback", Counter((key[0], facts.model_version) for key, facts in joined.items()))
    return buckets, tallies


def _write_feedback(
    session: Session, prepared: PreparedFeedback, rules: IntakeRules, profile_for: Profiles
) -> set[tuple[str, str]]:
    """A label joins its prediction's key once (compare-and-set); one whose prediction has not
    arrived waits (`waiting_labels`) until the prediction's intake joins it. A label of a key already
    labelled, or already waiting, is a duplicate. Returns the keys stored."""
    firsts, hashed, now = prepared.firsts, prepared.hashed, utcnow()
    claimed = _claim(session, hashed, rules, prepared.read.keys())
    missing = {key: hash_ for key, hash_ in hashed.items() if key not in claimed}
    labelled = _labelled_keys(session, missing) if missing else set()
    unknown = [key for key in missing if key not in labelled]
    waiting = insert_rows(
        session,
        WaitingLabel.__table__,
        [
            {
                "model_name": key[0],
                "request_id": key[1],
                "key": hashed[key],
                "label": firsts[key].label,
                "business_value": firsts[key].business_value,
                "received_at": now,
            }
            for key in unknown
        ],
        ("model_name", "request_id"),
    )
    insert_rows(
        session,
        Feedback.__table__,
        [
            {
                "model_name": r.model_name,
                "request_id": r.request_id,
                "label": r.label,
                "business_value": r.business_value,
                "timestamp": r.timestamp or now,
                "received_at": now,
            }
            for key, r in firsts.items()
            if (key in claimed or key in waiting) and in_sample(r.request_id, rules.raw_fraction)
        ],
        ("model_name", "request_id"),
    )
    if claimed == prepared.read.keys():
        insert_rows(session, ModelTallyAppend.__table__, prepared.bucket_rows)
        insert_rows(session, Tally.__table__, prepared.tally_rows)
        tallies = TallyRows()
    else:  # labelled by another writer since the read, or predictions stored since
        joined = _claimed_facts(session, claimed, prepared.read, hashed, rules)
        buckets, tallies = _label_aggregates(firsts, joined, rules, profile_for)
        _append_bucket_totals(session, buckets)
    tallies.count("feedback", Counter((key[0], UNKNOWN_VERSION) for key in waiting))
    tallies.write(session)
    return claimed | waiting


def aggregate_stored(
    session: Session,
    since: datetime,
    bucket_seconds: int = 60,
    chunk: int = 10_000,
    appends: Table = ModelTallyAppend.__table__,
    key_table: Table = PredictionKey.__table__,
) -> int:
    """Keys and aggregates for the raw predictions (and their labels) stored since `since`, as if
    they had just arrived: what an upgrade to aggregates does, so windows read no gap and labels
    still to come find their predictions. Without the configuration at hand, classes and names
    are not bounded by a reference and segments are not counted. `appends` and `key_table` are
    where the aggregates and keys go, as the migration running this has them (a key table keyed
    by model and request id gets those columns). Returns the predictions added."""
    prediction, feedback = Prediction.__table__, Feedback.__table__
    after, added, now = 0, 0, utcnow()
    while True:
        rows = session.execute(
            select(prediction, feedback.c.label, feedback.c.business_value)
            .outerjoin(
                feedback,
                and_(
                    feedback.c.model_name == prediction.c.model_name,
                    feedback.c.request_id == prediction.c.request_id,
                ),
            )
            .where(prediction.c.id > after, prediction.c.timestamp >= since)
            .order_by(prediction.c.id)
            .limit(chunk)
        ).all()
        if not rows:
            return added
        after = rows[-1].id
        buckets, keys = BucketTotals(), []
        for row in rows:
            record = PredictionRecord.model_construct(**{k: row._mapping[k] for k in PREDICTION_FIELDS})
            facts = served(record, bucket_seconds, None, None)
            buckets.prediction(facts, row.latency_seconds)
            labelled = row.label is not None and facts.predicted is not None
            if labelled:
                buckets.label(facts, outcome_class(row.label, None), row.business_value)
            key = {**facts.key_row(now), "labelled": labelled, "model_name": record.model_name}
            key["request_id"] = record.request_id
            keys.append({column.name: key[column.name] for column in key_table.c})
        insert_rows(session, key_table, keys, tuple(c.name for c in key_table.primary_key))
        _append_bucket_totals(session, buckets, appends)
        added += len(rows)


def _join_waiting(
    session: Session,
    hashes: Mapping[bytes, tuple[str, str]],
    rules: IntakeRules,
    profile_for: Callable[[str], ReferenceProfile | None],
    buckets: BucketTotals,
    tallies: TallyRows,
) -> int:
    """Join the waiting labels of these keys (each key's hash, `request_key`, to the key): each is
    claimed by deleting it, so two joins never count one twice; their counts go to `buckets` and
    `tallies`. Returns how many were joined."""
    waiting = WaitingLabel.__table__
    labels: dict[tuple[str, str], FeedbackRecord] = {}
    for chunk in _chunks(list(hashes)):
        match, _, parameters = driver_keys(session, chunk)
        if not driver_rows(session, f"SELECT 1 FROM waiting_labels WHERE key {match} LIMIT 1", parameters):
            continue  # most predictions have no label waiting: a probe costs less than the delete
        rows = session.execute(
            delete(waiting)
            .where(one_of(session, waiting.c.key, list(chunk)))
            .returning(waiting.c.model_name, waiting.c.request_id, waiting.c.label, waiting.c.business_value)
        )
        for model, request_id, label, value in rows:
            labels[(model, request_id)] = FeedbackRecord(
                model_name=model, request_id=request_id, label=label, business_value=value
            )
    if not labels:
        return 0
    claimed = _claim_keys(session, {key: hash_ for hash_, key in hashes.items() if key in labels}, rules)
    _count_labels(
        ((labels[key], facts) for key, facts in claimed.items()), rules, profile_for, buckets, tallies
    )
    return len(claimed)


def join_waiting_labels(store: Store, rules: IntakeRules, limit: int = 10_000) -> int:
    """Join the labels that arrived before their prediction and missed its arrival (see
    `CONCURRENT_JOIN_MARGIN`; a prediction's intake joins the labels waiting for it). Reads only
    the recent waiting labels, so labels whose prediction never comes cost nothing here."""
    waiting, keys = WaitingLabel.__table__, PredictionKey.__table__
    with store.reading() as session:
        found = session.execute(
            select(waiting.c.model_name, waiting.c.request_id)
            .join(keys, keys.c.key == waiting.c.key)
            .where(waiting.c.received_at >= utcnow() - CONCURRENT_JOIN_MARGIN, keys.c.labelled.is_(False))
            .limit(limit)
        ).all()
    if not found:
        return 0
    profiles = {name: rules.profile_for(name) for name in {model for model, _ in found}}
    buckets, tallies = BucketTotals(), TallyRows()
    hashes = {request_key(model, request_id): (model, request_id) for model, request_id in found}
    with store.writing() as session:
        joined = _join_waiting(session, hashes, rules, profiles.get, buckets, tallies)
        _append_bucket_totals(session, buckets)
        tallies.write(session)
    return joined


def _insert_new(
    session: Session, table: Table, records: Sequence[Any], key: tuple[str, ...], **columns: Any
) -> tuple[set[tuple[str, ...]], list[dict[str, Any]]]:
    """Insert the first record of each key not stored before (with `columns` added); the keys
    inserted, and their rows (what the tallies count: a duplicate is counted once)."""
    firsts: dict[tuple[str, ...], dict[str, Any]] = {}
    for record in records:
        row = record.model_dump()
        firsts.setdefault(tuple(row[k] for k in key), {**row, **columns})
    inserted = insert_rows(session, table, list(firsts.values()), key)
    return inserted, [row for k, row in firsts.items() if k in inserted]


def _write_pipeline_runs(
    session: Session, records: Sequence[PipelineRunRecord], buckets_for: Callable[[str], Sequence[float]]
) -> set[tuple[str, ...]]:
    key = ("pipeline_name", "run_id", "stage")
    inserted, rows = _insert_new(
        session, PipelineRun.__table__, records, key, source="intake", received_at=utcnow()
    )
    durations = ((r["pipeline_name"], r["stage"], r["duration_seconds"]) for r in rows)
    handled: Counter[tuple[str, str, str]] = Counter()
    failed: Counter[tuple[str, str, str]] = Counter()
    for row in rows:
        handled[(row["pipeline_name"], row["stage"], "")] += row["records"]
        failed[(row["pipeline_name"], row["stage"], "")] += row["errors"]
    tallies = TallyRows()
    tallies.histogram(PIPELINE_LATENCY, durations, buckets_for)
    tallies.add(PIPELINE_RECORDS, handled)
    tallies.add(PIPELINE_RECORD_ERRORS, failed)
    tallies.write(session)
    return inserted


def _write_feature_lookups(
    session: Session, records: Sequence[FeatureLookupRecord], buckets_for: Callable[[str], Sequence[float]]
) -> set[tuple[str, ...]]:
    key = ("feature_store", "feature_view", "request_id")
    inserted, rows = _insert_new(session, FeatureLookup.__table__, records, key, received_at=utcnow())
    keys: Counter[tuple[str, str, str]] = Counter()
    errors: Counter[tuple[str, str, str]] = Counter()
    for row in rows:
        keys[(row["feature_store"], row["feature_view"], "")] += row["keys"]
        errors[(row["feature_store"], row["feature_view"], "")] += row["errors"]
    tallies = TallyRows()
    latencies = ((r["feature_store"], r["feature_view"], r["latency_seconds"]) for r in rows)
    tallies.histogram(FEATURE_LOOKUP_LATENCY, latencies, buckets_for)
    tallies.add(FEATURE_KEYS, keys)
    tallies.add(FEATURE_KEY_ERRORS, errors)
    tallies.write(session)
    return inserted


Transaction = Callable[[Session], set[tuple[str, ...]]]


@dataclass(frozen=True)
class BatchWriter:
    """How one kind of record is stored: `transaction(records, store)` is the write of those
    records (worked out beforehand, reading `store` if need be), which returns the keys it stored
    (a key stored before is a duplicate); `key(record)` is a record's key."""

    transaction: Callable[[Sequence[Any], Store], Transaction]
    key: Callable[[Any], tuple[str, ...]]

    def store(self, store: Store, batches: Sequence[Sequence[Any]]) -> list[StoredBatch]:
        """Store the batches in one transaction (a group commit), whole or not at all, and answer
        each as if it had been stored alone, in order: a record stored by an earlier batch of the
        group is a duplicate in a later one."""
        write = self.transaction([record for batch in batches for record in batch], store)
        stored = store.write_idempotently(write, bulk=True)
        answers, seen = [], set()
        for batch in batches:
            keys = {self.key(record) for record in batch}
            answers.append(StoredBatch(received=len(batch), stored=len((keys & stored) - seen)))
            seen |= keys
        return answers


def _request_key(record: PredictionRecord | FeedbackRecord) -> tuple[str, str]:
    return record.model_name, record.request_id


def _with_profiles(
    prepare: Callable[[Sequence[Any], IntakeRules, Profiles, Store], Any],
    write: Callable[[Session, Any, IntakeRules, Profiles], set],
    rules: IntakeRules,
) -> Callable[[Sequence[Any], Store], Transaction]:
    """A batch's transaction, and what `prepare` works out of its records before it (outside the
    write turn; the transaction may run more than once, so it must not change what was prepared)."""

    def transaction(records: Sequence[Any], store: Store) -> Transaction:
        # Resolved once per model, before the transaction: no reference is read, nor its file
        # stat'ed, per record or while the batch holds its write lock.
        profiles = {name: rules.profile_for(name) for name in {r.model_name for r in records}}
        prepared = prepare(records, rules, profiles.get, store)
        return lambda session: write(session, prepared, rules, profiles.get)

    return transaction


def prediction_writer(rules: IntakeRules = DEFAULT_RULES) -> BatchWriter:
    """Predictions, checked against their model's reference."""
    return BatchWriter(_with_profiles(_prepare_predictions, _write_predictions, rules), _request_key)


def feedback_writer(rules: IntakeRules = DEFAULT_RULES) -> BatchWriter:
    return BatchWriter(_with_profiles(_prepare_feedback, _write_feedback, rules), _request_key)


def pipeline_run_writer(duration_buckets: Callable[[str], Sequence[float]]) -> BatchWriter:
    """Idempotent by (pipeline_name, run_id, stage); `duration_buckets(pipeline)` bounds its histogram."""
    return BatchWriter(
        lambda records, _store: lambda session: _write_pipeline_runs(session, records, duration_buckets),
        lambda record: (record.pipeline_name, record.run_id, record.stage),
    )


def feature_lookup_writer(latency_buckets: Callable[[str], Sequence[float]]) -> BatchWriter:
    """Idempotent by (feature_store, feature_view, request_id); `latency_buckets(store)` bounds its
    histogram."""
    return BatchWriter(
        lambda records, _store: lambda session: _write_feature_lookups(session, records, latency_buckets),
        lambda record: (record.feature_store, record.feature_view, record.request_id),
    )


def store_pipeline_runs(
    store: Store, records: Sequence[PipelineRunRecord], duration_buckets: Callable[[str], Sequence[float]]
) -> StoredBatch:
    return pipeline_run_writer(duration_buckets).store(store, [records])[0]


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
