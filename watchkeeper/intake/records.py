"""Prediction and feedback records as model services send them, and how a batch is parsed.

A batch is a JSON array or NDJSON (one object per line). Parsing is all-or-nothing: the first
problem found is reported with the record's index and the field, and nothing is stored.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from watchkeeper.config import WatchkeeperConfig
from watchkeeper.intake.bodies import (
    BodyError,
    Timestamp,
    check_value,
    parse_json,
    parse_plain,
    text_needs_checks,
    too_deep,
)
from watchkeeper.intake.kinds import BINARY, MULTICLASS, embeddings_problem, label_problem, prediction_problem

# A tuple, not `str | int | ...` written in the call: that builds the union anew each time (0.59
# against 0.07 µs, once a prediction and once a label).
_SCALAR_OR_OBJECT = (str, int, float, bool, dict)


def _scalar_or_object(value: Any) -> Any:
    """One message for every shape a prediction or label cannot take (a union of types would name
    each of its members); which of these shapes a model takes is its task's (`intake/kinds.py`)."""
    if isinstance(value, _SCALAR_OR_OBJECT):
        return value
    raise ValueError("expected a class or a number, or for a ranking model an object with 'items'")


# A prediction or label: a JSON scalar, or a ranking model's object (finite numbers: `check_value`).
ScalarOrObject = Annotated[
    Any,
    AfterValidator(_scalar_or_object),
    WithJsonSchema({"anyOf": [{"type": t} for t in ("string", "number", "integer", "boolean", "object")]}),
]
Probability = Annotated[float, Field(ge=0, le=1)]
MAX_SCORES = 100  # classes in a multiclass prediction's scores
MAX_CLASS_NAME = 256
# Bounds that keep sums finite in the store and in /metrics however long the service runs.
MAX_SECONDS = 30 * 86_400
MAX_AMOUNT = 1e15
MAX_COUNT = 10**12


TRACE_ID_PATTERN = r"^[0-9a-f]{32}$"


class RecordModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    subject_field: ClassVar[str] = "model_name"

    @classmethod
    def known_subjects(cls, config: WatchkeeperConfig) -> list[str]:
        return [m.name for m in config.models]


class PredictionRecord(RecordModel):
    model_name: str = Field(min_length=1, max_length=128)
    model_version: str = Field(min_length=1, max_length=64)
    request_id: str = Field(min_length=1, max_length=256)
    timestamp: Timestamp
    features: dict[str, Any]
    error: StrictBool = False
    prediction: ScalarOrObject | None = Field(
        default=None,
        validate_default=True,
        description="By the model's task: binary, any class (the configured positive_class or not); "
        "multiclass, a class (those outside the configured classes count as _other_); regression, a "
        'number; ranking, {"items": [...], "scores": [...]} (ranked, at most ranking.max_list_length '
        "items; scores optional). Required unless error is true.",
        examples=[1, "dog", 42.5, {"items": ["sku-9", "sku-2", "sku-7"], "scores": [0.9, 0.7, 0.4]}],
    )
    score: float | None = Field(default=None, ge=-MAX_AMOUNT, le=MAX_AMOUNT)
    scores: dict[Annotated[str, Field(max_length=MAX_CLASS_NAME)], Probability] | None = Field(
        default=None,
        max_length=MAX_SCORES,
        description="A multiclass model's probability of each class (estimates its quality before "
        "labels arrive); a binary model sends its positive class's as score",
        examples=[{"dog": 0.7, "cat": 0.2, "bird": 0.1}],
    )
    latency_seconds: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    trace_id: str | None = Field(
        default=None,
        pattern=TRACE_ID_PATTERN,
        description="The request's OpenTelemetry trace id, 32 lowercase hex digits as in its traceparent: "
        "the latency histogram's exemplars and an incident's example requests link to its trace",
        examples=["0af7651916cd43dd8448eb211c80319c"],
    )

    @field_validator("trace_id")
    @classmethod
    def _not_the_invalid_trace_id(cls, trace_id: str | None) -> str | None:
        if trace_id is not None and not trace_id.strip("0"):
            raise ValueError("all zeros is the invalid trace id: send none")
        return trace_id

    @field_validator("prediction")
    @classmethod
    def _required_unless_error(cls, prediction: Any, info: ValidationInfo) -> Any:
        if prediction is None and not info.data.get("error", False):
            raise ValueError("required unless error is true")
        return prediction


class FeedbackRecord(RecordModel):
    model_name: str = Field(min_length=1, max_length=128)
    request_id: str = Field(min_length=1, max_length=256)
    label: ScalarOrObject = Field(
        description="The ground truth, in the prediction's shape: a class (binary, multiclass), a "
        'number (regression), or for ranking {"items": [...], "relevance": [...]}: the items the user '
        "interacted with, relevance 1 when not sent",
        examples=[1, "dog", 40.0, {"items": ["sku-2"], "relevance": [3]}],
    )
    business_value: float | None = Field(default=None, ge=-MAX_AMOUNT, le=MAX_AMOUNT)
    timestamp: Timestamp | None = None


class PipelineRunRecord(RecordModel):
    """One stage of one pipeline run: how long it took, how many records it handled, how many failed."""

    subject_field: ClassVar[str] = "pipeline_name"

    pipeline_name: str = Field(min_length=1, max_length=128)
    run_id: str = Field(min_length=1, max_length=256)
    stage: str = Field(default="all", min_length=1, max_length=128)
    started_at: Timestamp
    duration_seconds: float = Field(ge=0, le=MAX_SECONDS)
    records: int = Field(default=0, ge=0, le=MAX_COUNT)
    errors: int = Field(default=0, ge=0, le=MAX_COUNT)

    @classmethod
    def known_subjects(cls, config: WatchkeeperConfig) -> list[str]:
        return [p.name for p in config.pipelines]


class FeatureLookupRecord(RecordModel):
    """One lookup of one feature view by the serving path: how long it took, how many entity keys
    it asked for, how many of them failed or came back empty, and the newest materialisation time
    among the values it served (the view's freshness as served)."""

    subject_field: ClassVar[str] = "feature_store"

    feature_store: str = Field(min_length=1, max_length=128)
    feature_view: str = Field(min_length=1, max_length=128)
    request_id: str = Field(min_length=1, max_length=256)
    timestamp: Timestamp
    latency_seconds: float = Field(ge=0, le=MAX_SECONDS)
    keys: int = Field(default=1, ge=1, le=MAX_COUNT)
    errors: int = Field(default=0, ge=0, le=MAX_COUNT, description="Keys that failed or were missing")
    materialized_at: Timestamp | None = None

    @classmethod
    def known_subjects(cls, config: WatchkeeperConfig) -> list[str]:
        return [f.name for f in config.feature_stores]

    @field_validator("errors")
    @classmethod
    def _at_most_keys(cls, errors: int, info: ValidationInfo) -> int:
        keys = info.data.get("keys")
        if keys is not None and errors > keys:
            raise ValueError(f"expected at most keys ({keys}) errors")
        return errors


Record = TypeVar("Record", PredictionRecord, FeedbackRecord, PipelineRunRecord, FeatureLookupRecord)


class BatchError(Exception):
    """A batch refused as a whole; `index` is the record's position, `field` its key path."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.index, self.field = message, index, field

    def as_detail(self) -> dict[str, Any]:
        return {"error": self.message, "index": self.index, "field": self.field}


class BatchTooLarge(BatchError):
    """More records than the intake accepts in one request (HTTP 413)."""


def decode_batch(text: str, content_type: str | None) -> list[Any]:
    """A JSON array, or NDJSON when the body is not an array (or says application/x-ndjson); every
    record checked for what the store cannot keep (`watchkeeper.intake.bodies.check_value`)."""
    stripped = text.lstrip()
    if not stripped:
        raise BatchError("the body is empty: expected a JSON array or NDJSON records")
    ndjson = content_type is not None and "ndjson" in content_type
    if stripped.startswith("[") and not ndjson:
        plain = parse_plain(text)
        if type(plain) is list and plain and not any(map(too_deep, plain)):
            return plain
        items = _loads(text)
        if not isinstance(items, list) or not items:
            raise BatchError("expected a JSON array of at least one record")
    else:
        items = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                items.append(_loads(line, f"NDJSON line {line_number}: ", len(items)))
    check_text = text_needs_checks(text)
    for index, item in enumerate(items):
        try:
            check_value(item, check_text=check_text)
        except BodyError as exc:
            raise BatchError(exc.message, index=index, field=exc.field) from exc
    return items


def _loads(text: str, prefix: str = "", index: int | None = None) -> Any:
    try:
        return parse_json(text)
    except BodyError as exc:
        raise BatchError(prefix + exc.message, index) from exc


_ADAPTERS: dict[type, TypeAdapter[Any]] = {
    record_type: TypeAdapter(list[record_type])  # type: ignore[valid-type]
    for record_type in (PredictionRecord, FeedbackRecord, PipelineRunRecord, FeatureLookupRecord)
}


def validate_batch(items: list[Any], record_type: type[Record], config: WatchkeeperConfig) -> list[Record]:
    try:
        records: list[Record] = _ADAPTERS[record_type].validate_python(items)
    except ValidationError as exc:
        first = exc.errors()[0]
        index, *path = first["loc"]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or None
        raise BatchError(_explain(first), index=int(index), field=field) from exc
    known = set(record_type.known_subjects(config))
    field = record_type.subject_field
    for index, record in enumerate(records):
        name = getattr(record, field)
        if name not in known:
            kind, expected = field.removesuffix("_name"), ", ".join(sorted(known))
            raise BatchError(
                f"unknown {kind} {name!r}: expected one of the configured {kind}s ({expected})",
                index=index,
                field=field,
            )
    if record_type is FeatureLookupRecord:
        _check_views(records, config)
    elif record_type is not PipelineRunRecord:
        _check_shapes(records, config)
    return records


def _check_views(records: list[Any], config: WatchkeeperConfig) -> None:
    stores = config.feature_stores_by_name
    for index, record in enumerate(records):
        views = stores[record.feature_store].views_by_name
        if record.feature_view not in views:
            raise BatchError(
                f"unknown feature view {record.feature_view!r} of {record.feature_store}: expected one "
                f"of its configured views ({', '.join(sorted(views))})",
                index=index,
                field="feature_view",
            )


def _check_shapes(records: list[Any], config: WatchkeeperConfig) -> None:
    """Each prediction and label in the shape its model's task takes (`watchkeeper.intake.kinds`):
    a ranked list only for a ranking model, a number for a regression model; each embedding
    feature its configured length."""
    models = config.models_by_name
    for index, record in enumerate(records):
        if isinstance(record, PredictionRecord):
            model = models[record.model_name]
            prediction = record.prediction
            shaped = prediction is not None and (type(prediction) is dict or model.task != BINARY)
            problem = prediction_problem(model, prediction, record.error) if shaped else None
            if problem is None and record.scores is not None and model.task != MULTICLASS:
                problem = (
                    "scores",
                    f"'scores' is for multiclass models; {model.name} is a {model.task} model"
                    + (
                        " (it sends its positive class's probability as score)"
                        if model.task == BINARY
                        else ""
                    ),
                )
            if problem is None and model.embeddings:
                problem = embeddings_problem(model, record.features)
        elif type(record.label) is dict or models[record.model_name].task != BINARY:
            problem = label_problem(models[record.model_name], record.label)
        else:
            problem = None
        if problem is not None:
            raise BatchError(problem[1], index=index, field=problem[0])


def _explain(error: dict[str, Any]) -> str:
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "model_type":
        return "expected a JSON object"
    return str(error["msg"])


def parse_batch(
    body: str,
    content_type: str | None,
    record_type: type[Record],
    config: WatchkeeperConfig,
    max_records: int,
) -> list[Record]:
    items = decode_batch(body, content_type)
    if len(items) > max_records:
        raise BatchTooLarge(f"the batch has {len(items)} records, more than the limit of {max_records}")
    return validate_batch(items, record_type, config)
