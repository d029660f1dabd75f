"""What the intake adds up as records arrive, per model, version and time bucket.

A collection cycle sums a window's buckets instead of re-reading its raw rows, so its cost depends
on the number of models and buckets, not on traffic. Each measure is additive:

- `requests`, `errors`: predictions and failed ones;
- `latency`: a log-bucketed sketch of inference latency (detail: the sketch index), whose
  quantiles are within `LATENCY_ACCURACY` of the true value (DDSketch's relative-error buckets);
- `class`: served predictions per predicted class;
- `outcome`, `value`: labelled served predictions per (predicted, actual) class pair, and the
  business value of each pair (the confusion matrix, for any number of classes);
- `awaiting`: served, scored predictions still without a label, per (predicted class, score bin):
  what performance is estimated on (CBPE). A label takes its prediction out again;
- `segment_requests`, `segment_class`, `segment_outcome`: the same per segment column value.

A regression model's predictions are numbers, not classes (`watchkeeper.intake.kinds`); instead of
`class`, `outcome` and `awaiting` it keeps:

- `predicted`: a sketch of the predicted values (detail: `signed_index`), as `latency`'s;
- `errors_of_labelled`: sums over the labelled predictions (details `REGRESSION_SUMS`) from which
  MAE, RMSE, MAPE, the mean error and R² follow; `error_sketch`: a sketch of their errors;
- `segment_served`, `segment_errors`: per segment column value, served predictions and the error
  sums (`n`, `abs`, `sq`) of the labelled ones;
- `awaiting_loss`: the served predictions still without a label (`n`) and their expected absolute
  error (`abs`, from the reference's loss model, `loss.py`), as `awaiting` is for CBPE.

A ranking model keeps instead:

- `recommended`: per item (detail: its `item_key`), how often it was in a ranked list's first
  max(k) places: coverage, popularity bias, novelty and the items' drift follow;
- `ranking_of_labelled`: per-request scores summed over the requests with feedback
  (`kinds.ranking_scores`: n, relevant, rr, precision@k, recall@k, ndcg@k, hit@k);
- `segment_served`, `segment_ranking`: per segment value, served predictions and the feedback's
  `n` and NDCG at the first k.

A label counts in the bucket of its prediction's time, so a window's quality is that of the
predictions served in it, as when it was computed from the joined rows.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from watchkeeper.config import MISSING_SEGMENT, OTHER_SEGMENT, Model
from watchkeeper.intake.checks import OTHER_CLASS, ReferenceProfile, class_name
from watchkeeper.intake.kinds import (
    BINARY,
    ITEM_SEPARATOR,
    MULTICLASS,
    RANKING,
    REGRESSION,
    multiclass_class,
    number_text,
    ranked_keys,
    ranking_scores,
    regression_error,
)

REQUESTS, ERRORS, LATENCY = "requests", "errors", "latency"
CLASS, OUTCOME, VALUE, AWAITING = "class", "outcome", "value", "awaiting"
SEGMENT_REQUESTS, SEGMENT_CLASS, SEGMENT_OUTCOME = "segment_requests", "segment_class", "segment_outcome"
PREDICTED, ERRORS_OF_LABELLED, ERROR_SKETCH = "predicted", "errors_of_labelled", "error_sketch"
LABEL_SKETCH = "label_sketch"  # a regression model's labels, as `signed_index` buckets
SEGMENT_SERVED, SEGMENT_ERRORS = "segment_served", "segment_errors"
RECOMMENDED, RANKING_OF_LABELLED, SEGMENT_RANKING = "recommended", "ranking_of_labelled", "segment_ranking"
AWAITING_LOSS = "awaiting_loss"  # a regression model's unlabelled predictions: n, and their expected |error|
# A multiclass model's unlabelled scored predictions: per (predicted, class), the sum of their
# calibrated probabilities of the class (`class_estimation.py`), the expected confusion matrix.
AWAITING_CLASSES = "awaiting_classes"
RANKED = "ranked"  # what a ranking model's served prediction counts as in its key row's `predicted`
# The sums kept of a regression model's labelled predictions (error = prediction - label):
# n, error, |error|, error², label, label², |error| / |label| over non-zero labels, and their count.
REGRESSION_SUMS = ("n", "error", "abs", "sq", "label", "label_sq", "ape", "ape_n")
SEPARATOR = "\x1f"  # between the parts of a detail; never inside a name (see `name_of`)
PAIRS = "\x1e"  # between a key row's (column, value) pairs
MAX_NAME = 64  # class and segment names stay short whatever a sender puts in them
KEY_TAIL = 4  # characters of a request id kept as they are at the end of its key (`request_key`)
LATENCY_ACCURACY = 0.01
_GAMMA = (1 + LATENCY_ACCURACY) / (1 - LATENCY_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
ZERO_LATENCY = "zero"  # not an index: 1 s is index 0
PRIORITY_SPACE = 2**63


def bucket_start(timestamp: datetime, seconds: int) -> datetime:
    """The start of the bucket holding `timestamp` (UTC, buckets aligned to the epoch)."""
    epoch = int(timestamp.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def latency_index(seconds: float) -> str:
    """The sketch bucket of a latency: i such that gamma^(i-1) < seconds <= gamma^i."""
    if seconds <= 0:
        return ZERO_LATENCY
    return str(math.ceil(math.log(seconds) / _LOG_GAMMA))


def signed_index(value: float) -> str:
    """A signed value's sketch bucket: its magnitude's `latency_index`, after its sign."""
    if value == 0:
        return ZERO_LATENCY
    return ("-" if value < 0 else "+") + latency_index(abs(value))


def signed_value(index: str) -> float:
    """What a `signed_index` bucket stands for: within LATENCY_ACCURACY of every value in it."""
    if index == ZERO_LATENCY:
        return 0.0
    return (-1.0 if index[0] == "-" else 1.0) * latency_at(index[1:])


def latency_at(index: str) -> float:
    """The value a sketch bucket stands for: within LATENCY_ACCURACY of every latency in it."""
    if index == ZERO_LATENCY:
        return 0.0
    return 2 * _GAMMA ** int(index) / (_GAMMA + 1)


def score_bin(score: float) -> str:
    """Scores in [0, 1] to the nearest 0.01; others to two significant digits."""
    if 0.0 <= score <= 1.0:
        return f"{round(score, 2):.2f}"
    return f"{float(f'{score:.2g}'):g}"


def request_priority(request_id: str) -> int:
    """A request id's place in every sample: a 63-bit hash (it fits a signed BIGINT), the same in
    every replica, for the prediction and for its label."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big") >> 1


def request_key(model_name: str, request_id: str) -> bytes:
    """A prediction's key in the store: a 96-bit hash of its model and its request id but the last
    four characters, then those characters. Shorter than the two (a key row is kept for a day by
    default, and its index by arrival repeats it); among a billion keys, two collide with a
    probability below 1e-11. Counter ids (`req-000123`) that follow each other keep their order, so a
    batch of them writes a few pages of the key table, not one page each: random ids (UUID4) cost
    about 25 µs more a prediction on SQLite (docs/benchmarks.md)."""
    head, tail = request_id[:-KEY_TAIL], request_id[-KEY_TAIL:]
    return hashlib.blake2b(f"{model_name}\x00{head}".encode(), digest_size=12).digest() + tail.encode()


def in_sample(request_id: str, fraction: float) -> bool:
    """Whether a request id is in the `fraction` kept raw (by `request_priority`)."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    return request_priority(request_id) < fraction * PRIORITY_SPACE


class BottomK:
    """Which predictions to write to the drift sample: those among the `k` smallest priorities this
    process has seen in their (model, bucket).

    What it writes is a superset of each bucket's true bottom-k whatever the number of replicas
    (a row in the global bottom-k is in its own replica's bottom-k when it arrives), and costs
    k * (1 + ln(n / k)) rows for a bucket of n predictions. The store keeps the k smallest
    (`store/samples.py`). Memory: at most `buckets` open buckets per model.
    """

    def __init__(self, k: int, buckets: int = 8) -> None:
        self.k, self.buckets = k, buckets
        self._heaps: dict[tuple[str, str], dict[datetime, list[int]]] = {}
        self._lock = threading.Lock()

    def admit(self, scope: str, entries: Iterable[tuple[str, datetime, int]]) -> list[bool]:
        """Whether each (model, bucket start, priority) of a batch goes to the sample: one lock a
        batch, and each (model, bucket)'s heap looked up once."""
        admitted, k = [], self.k
        heaps: dict[tuple[str, datetime], list[int]] = {}
        with self._lock:
            for model, start, priority in entries:
                heap = heaps.get((model, start))
                if heap is None:
                    heap = heaps[(model, start)] = self._heap(scope, model, start)
                if len(heap) < k:
                    heapq.heappush(heap, -priority)
                    admitted.append(True)
                elif priority < -heap[0]:
                    heapq.heapreplace(heap, -priority)
                    admitted.append(True)
                else:
                    admitted.append(False)
        return admitted

    def _heap(self, scope: str, model: str, start: datetime) -> list[int]:
        open_buckets = self._heaps.setdefault((scope, model), {})
        heap = open_buckets.get(start)
        if heap is None:
            if len(open_buckets) >= self.buckets:
                del open_buckets[min(open_buckets)]
            heap = open_buckets[start] = []
        return heap


def name_of(value: object) -> str:
    return class_name(value).replace(SEPARATOR, " ").replace(PAIRS, " ")[:MAX_NAME]


def detail(*parts: str) -> str:
    return SEPARATOR.join(parts)


def parts(text: str) -> list[str]:
    return text.split(SEPARATOR)


def outcome_class(value: object, profile: ReferenceProfile | None) -> str:
    """The class a binary model's prediction or label counts under: one of the reference's classes
    (or `_other_`) when the reference knows them, so a sender cannot create series; else its short
    name."""
    if profile is not None and profile.class_shares:
        name = class_name(value)
        return name if name in profile.class_shares else OTHER_CLASS
    return name_of(value)


def outcome_of(value: object, profile: ReferenceProfile | None, model: Model | None) -> str:
    """What a prediction or label counts as for its model's task: a bounded class, or for a
    regression model its number (`number_text`)."""
    task = model.task if model is not None else BINARY
    if task == RANKING:
        return RANKED
    if task == REGRESSION:
        return number_text(value)
    if task == MULTICLASS:
        return multiclass_class(value, model)  # type: ignore[arg-type]
    return outcome_class(value, profile)


def segment_value(value: object, profile: ReferenceProfile | None, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_SEGMENT
    name = name_of(value)
    spec = profile.columns.get(column) if profile is not None else None
    if spec is not None and spec.categories is not None and class_name(value) not in spec.categories:
        return OTHER_SEGMENT
    return name


class Served(NamedTuple):
    """What a label's join needs of its prediction (a `prediction_keys` row). A named tuple: one is
    made for every prediction and every label, and a frozen dataclass's `__init__` (a
    `object.__setattr__` a field) was 3 % of the intake's time."""

    model_name: str
    request_id: str
    model_version: str
    bucket_start: datetime
    predicted: str | None  # None: the prediction failed; a regression model's number as text
    score_bin: str | None
    segments: tuple[tuple[str, str], ...] = ()
    task: str = BINARY
    ranked: tuple[str, ...] = ()  # a ranking model's items' keys, best first
    shown: int = 0  # of which the first `shown` count as recommended (max k)
    probabilities: tuple[tuple[str, float], ...] = ()  # a scored multiclass prediction's, calibrated

    def key_row(self, received_at: datetime) -> dict[str, Any]:
        return {
            "key": request_key(self.model_name, self.request_id),
            "model_version": self.model_version,
            "bucket_start": self.bucket_start,
            "predicted": self.predicted,
            "score_bin": self.score_bin,
            "segments": PAIRS.join([column + SEPARATOR + value for column, value in self.segments]) or None,
            "ranked": ITEM_SEPARATOR.join(self.ranked) or None,
            "probabilities": PAIRS.join(detail(c, f"{p:.6g}") for c, p in self.probabilities) or None,
            "labelled": False,
            "received_at": received_at,
        }

    @classmethod
    def from_key_row(
        cls, row: Mapping[str, Any], model_name: str, request_id: str, task: str = BINARY
    ) -> Served:
        """The key row's facts; the row holds a hash of its model and request id, not them."""
        return cls(
            model_name,
            request_id,
            row["model_version"],
            row["bucket_start"],
            row["predicted"],
            row["score_bin"],
            tuple(tuple(parts(pair)) for pair in row["segments"].split(PAIRS)) if row["segments"] else (),
            task,
            tuple(row["ranked"].split(ITEM_SEPARATOR)) if row.get("ranked") else (),
            probabilities=_probabilities(row.get("probabilities")),
        )


def _probabilities(text: str | None) -> tuple[tuple[str, float], ...]:
    if not text:
        return ()
    pairs = (parts(pair) for pair in text.split(PAIRS))
    return tuple((name, float(probability)) for name, probability in pairs)


def served(
    record: Any,
    bucket_seconds: int,
    profile: ReferenceProfile | None,
    model: Model | None,
    expected_loss: float | None = None,
    probabilities: tuple[tuple[str, float], ...] = (),
) -> Served:
    """A prediction record as the aggregates count it; a regression model's `expected_loss` (its
    loss model's, when it has one) is kept where a classifier keeps its score bin, a multiclass
    model's calibrated `probabilities` (when it sends scores) in a column of their own."""
    failed = record.error or record.prediction is None
    segments = tuple(
        (s.column, segment_value(record.features.get(s.column), profile, s.column))
        for s in (model.segments if model else ())
    )
    task = model.task if model is not None else BINARY
    ranking = task == RANKING and not failed
    return Served(
        record.model_name,
        record.request_id,
        record.model_version,
        bucket_start(record.timestamp, bucket_seconds),
        None if failed else outcome_of(record.prediction, profile, model),
        _score_text(record, task, expected_loss) if not failed else None,
        segments,
        task,
        ranked_keys(record.prediction) if ranking else (),
        max(model.ranking.k) if ranking else 0,  # type: ignore[union-attr]
        probabilities if not failed else (),
    )


def _score_text(record: Any, task: str, expected_loss: float | None) -> str | None:
    if task == REGRESSION:
        return None if expected_loss is None else f"{expected_loss:.6g}"
    if task == RANKING or record.score is None:
        return None
    return score_bin(record.score)


class BucketTotals:
    """A batch's additions, one row per (model, version, bucket, measure, detail)."""

    def __init__(self) -> None:
        # Most of a batch's keys are new to it (a latency sketch's index, a score bin): a Counter
        # makes a Python call for each new key, a defaultdict none (0.23 against 0.56 µs an add).
        self.totals: defaultdict[tuple[str, str, datetime, str, str], float] = defaultdict(float)

    def add(self, facts: Served, measure: str, detail_text: str = "", amount: float = 1.0) -> None:
        self.totals[(facts.model_name, facts.model_version, facts.bucket_start, measure, detail_text)] += (
            amount
        )

    def prediction(self, facts: Served, latency_seconds: float | None) -> None:
        # A classifier's dozen additions written out with the key's head unpacked once: `add` and
        # `detail` calls were most of this (a prediction and its label, 4.9 against 6.6 µs).
        totals, sep = self.totals, SEPARATOR
        model, version, start = facts.model_name, facts.model_version, facts.bucket_start
        totals[(model, version, start, REQUESTS, "")] += 1.0
        if latency_seconds is not None:
            totals[(model, version, start, LATENCY, latency_index(latency_seconds))] += 1.0
        for column, value in facts.segments:
            totals[(model, version, start, SEGMENT_REQUESTS, column + sep + value)] += 1.0
        predicted = facts.predicted
        if predicted is not None and facts.task not in (REGRESSION, RANKING):
            totals[(model, version, start, CLASS, predicted)] += 1.0
            for column, value in facts.segments:
                totals[(model, version, start, SEGMENT_CLASS, column + sep + value + sep + predicted)] += 1.0
            if facts.score_bin is not None:
                totals[(model, version, start, AWAITING, predicted + sep + facts.score_bin)] += 1.0
            if facts.probabilities:
                self._awaiting_classes(facts, 1.0)
            return
        if predicted is None:
            self.add(facts, ERRORS)
            return
        if facts.task == REGRESSION:
            self.add(facts, PREDICTED, signed_index(float(predicted)))
            self._awaiting_loss(facts, 1.0)
        for item in facts.ranked[: facts.shown]:
            self.add(facts, RECOMMENDED, item)
        for column, value in facts.segments:
            self.add(facts, SEGMENT_SERVED, detail(column, value))

    def _awaiting_classes(self, facts: Served, sign: float) -> None:
        for name, probability in facts.probabilities:
            self.add(facts, AWAITING_CLASSES, detail(facts.predicted or "", name), sign * probability)

    def label(self, facts: Served, actual: str, business_value: float | None) -> None:
        """A label joined to its served prediction: counted, and no longer awaited."""
        if facts.predicted is None:
            return
        if facts.task == REGRESSION:
            error = regression_error(facts.predicted, actual)
            if error is not None:
                self._regression_label(facts, error, float(actual), business_value)
            return
        # Written out as `prediction`'s classifier additions are.
        totals, sep = self.totals, SEPARATOR
        model, version, start, predicted = (
            facts.model_name,
            facts.model_version,
            facts.bucket_start,
            facts.predicted,
        )
        pair = predicted + sep + actual
        totals[(model, version, start, OUTCOME, pair)] += 1.0
        if business_value is not None:
            totals[(model, version, start, VALUE, pair)] += business_value
        for column, value in facts.segments:
            totals[(model, version, start, SEGMENT_OUTCOME, column + sep + value + sep + pair)] += 1.0
        if facts.score_bin is not None:
            totals[(model, version, start, AWAITING, predicted + sep + facts.score_bin)] -= 1.0
        if facts.probabilities:
            self._awaiting_classes(facts, -1.0)

    def _awaiting_loss(self, facts: Served, sign: float) -> None:
        if facts.score_bin is not None:
            self.add(facts, AWAITING_LOSS, "n", sign)
            self.add(facts, AWAITING_LOSS, "abs", sign * float(facts.score_bin))

    def _regression_label(
        self, facts: Served, error: float, label: float, business_value: float | None
    ) -> None:
        self._awaiting_loss(facts, -1.0)
        sums = dict.fromkeys(REGRESSION_SUMS, 0.0)
        sums.update(n=1.0, error=error, abs=abs(error), sq=error * error, label=label, label_sq=label * label)
        if label != 0:
            sums.update(ape=abs(error) / abs(label), ape_n=1.0)
        for name, amount in sums.items():
            if amount:
                self.add(facts, ERRORS_OF_LABELLED, name, amount)
        self.add(facts, ERROR_SKETCH, signed_index(error))
        self.add(facts, LABEL_SKETCH, signed_index(label))
        if business_value is not None:
            self.add(facts, VALUE, "", business_value)
        for column, value in facts.segments:
            for name in ("n", "abs", "sq"):
                self.add(facts, SEGMENT_ERRORS, detail(column, value, name), sums[name])

    def ranking_label(
        self, facts: Served, relevance: Mapping[str, float], cutoffs: list[int], business_value: float | None
    ) -> dict[str, float]:
        """A ranking model's feedback joined to its ranked list: the request's scores at each k
        (returned, for the intake's counters)."""
        if facts.predicted is None:
            return {}
        found = ranking_scores(facts.ranked, relevance, cutoffs)
        for name, amount in found.items():
            if amount:
                self.add(facts, RANKING_OF_LABELLED, name, amount)
        if business_value is not None:
            self.add(facts, VALUE, "", business_value)
        first = f"ndcg@{cutoffs[0]}"
        for column, value in facts.segments:
            for name in ("n", first):
                self.add(facts, SEGMENT_RANKING, detail(column, value, name), found[name])
        return found

    def measures(self) -> dict[str, Counter[str]]:
        """measure -> detail -> total over every model, version and bucket added."""
        found: dict[str, Counter[str]] = {}
        for (_model, _version, _start, measure, detail_text), total in self.totals.items():
            found.setdefault(measure, Counter())[detail_text] += total
        return found

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "model_name": model,
                "model_version": version,
                "bucket_start": start,
                "measure": measure,
                "detail": detail_text,
                "total": float(total),
            }
            for (model, version, start, measure, detail_text), total in self.totals.items()
            if total
        ]
