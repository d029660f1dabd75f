"""The operator's YAML configuration: monitored models, datasets, pipelines, topology, notifications.

Every section is a strict pydantic model: an unknown key or a bad value stops start-up with one
message naming the file, the key path and what was expected. Secrets never appear in the file; a
field that needs one holds a reference to an environment variable or a Prefect Secret block.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from watchkeeper.times import UtcTime

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$"
HOME_PLACEHOLDER = "{home}"


class ConfigError(ValueError):
    """The configuration file cannot be used; the message says where and why."""


def parse_duration(value: Any) -> Any:
    """Accept `90`, `"90s"`, `"15m"`, `"1h"`, `"1d"`, `"250ms"` as well as what pydantic accepts."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
        raise ValueError(f"expected a duration such as '30s', '15m', '1h' or '1d', got {value!r}")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """Where a secret lives: an environment variable or a Prefect Secret block, never the file."""

    env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    prefect_secret: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.prefect_secret is None):
            raise ValueError("expected exactly one of 'env' or 'prefect_secret'")
        return self


FeatureType = Literal["numerical", "categorical", "text", "embedding"]
# Evidently's embedding drift methods: a domain classifier's ROC AUC, the maximum mean discrepancy,
# the distance between the centroids, the share of drifted components.
EMBEDDING_DRIFT_METHODS = ("model", "mmd", "distance", "ratio")
MAX_EMBEDDING_DIM = 4096


class Feature(Strict):
    """One input column. A `text` feature is judged by its descriptors (length, share of
    non-letter characters, share of words the reference never had); an `embedding` is a vector of
    `dim` numbers judged as a whole (Evidently's embedding drift, and its centroid's distance)."""

    name: Name
    type: FeatureType
    dim: int | None = Field(
        default=None, ge=1, le=MAX_EMBEDDING_DIM, description="An embedding's length (embeddings only)"
    )
    drift_method: str | None = Field(
        default=None,
        description="Evidently drift method for this column; Evidently's default when unset. An "
        "embedding takes one of model, mmd, distance, ratio (model when unset)",
    )
    drift_threshold: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _embedding_shape(self) -> Feature:
        if self.type == "embedding":
            if self.dim is None:
                raise ValueError("an embedding feature needs 'dim', its vectors' length")
            if self.drift_method is not None and self.drift_method not in EMBEDDING_DRIFT_METHODS:
                expected = ", ".join(EMBEDDING_DRIFT_METHODS)
                method = self.drift_method
                raise ValueError(f"an embedding's drift_method is one of {expected}, not {method!r}")
        elif self.dim is not None:
            raise ValueError("'dim' is for embedding features")
        return self


class FileReference(Strict):
    """A CSV or Parquet file; a relative path is taken from the configuration file's folder, and a
    path starting with `{home}` from WATCHKEEPER_HOME (where the demo writes its reference)."""

    kind: Literal["file"]
    path: Path

    @field_validator("path", mode="before")
    @classmethod
    def _relative_to_config(cls, path: Any, info: ValidationInfo) -> Path:
        context = info.context or {}
        text = str(path)
        if text.startswith(HOME_PLACEHOLDER):
            home = context.get("home") or Path(os.environ.get("WATCHKEEPER_HOME", ".watchkeeper"))
            return Path(home).expanduser().resolve() / text.removeprefix(HOME_PLACEHOLDER).lstrip("/")
        path = Path(text)
        base = context.get("base_dir")
        return path if path.is_absolute() or base is None else Path(base) / path


class SqlReference(Strict):
    kind: Literal["sql"]
    query: str
    database_url: SecretRef | None = Field(
        default=None, description="Database holding the reference data; Watchkeeper's own store when unset"
    )


class PeriodReference(Strict):
    """A fixed period of this model's own prediction log; from its first prediction when `start` is unset."""

    kind: Literal["period"]
    start: UtcTime | None = None
    duration: Duration


Reference = Annotated[FileReference | SqlReference | PeriodReference, Field(discriminator="kind")]


class Windows(Strict):
    metrics: Duration = timedelta(minutes=5)
    quality: Duration = timedelta(hours=1)
    drift: Duration = timedelta(hours=1)
    data_quality: Duration = timedelta(minutes=15)
    min_rows: int = Field(default=100, ge=1)
    label_horizon: Duration = Field(
        default=timedelta(days=1),
        description="How long a prediction waits for its label; a later label counts nowhere",
    )
    # Windows larger than these are read as a sample at the source, so memory stays bounded however
    # busy the model; null reads every row.
    drift_sample_rows: int | None = Field(
        default=200_000,
        ge=1000,
        description="Test drift on a uniform sample of at most this many rows per side (large windows)",
    )
    quality_sample_rows: int | None = Field(
        default=200_000,
        ge=1000,
        description="Check data quality on a sample of at most this many rows of a larger window",
    )


# The level of a drift p-value test Watchkeeper picks (windows of 1,000 rows or fewer): after the
# Benjamini-Hochberg correction across a model's features, about one stable evaluation in 1,000
# flags a feature. Evidently's 5% suits a one-off report, not a test repeated every 15 minutes.
DEFAULT_DRIFT_P_VALUE = 0.001


class Thresholds(Strict):
    min_label_coverage: float = Field(default=0.5, ge=0, le=1)
    accuracy_warning: float = Field(default=0.85, ge=0, le=1)
    accuracy_critical: float = Field(default=0.75, ge=0, le=1)
    drift_share: float = Field(default=0.5, ge=0, le=1)
    drift_p_value: float = Field(
        default=DEFAULT_DRIFT_P_VALUE,
        gt=0,
        lt=1,
        description="Level of drift p-value tests without a configured threshold (corrected across features)",
    )
    min_throughput_rps: float = Field(
        default=10.0, ge=0, description="ModelThroughputLow fires below this (the seed's 10 rps)"
    )
    max_latency_p95_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Latency limit the capacity trend warns about before p95 reaches it (the seed's 1 s)",
    )
    capacity_rps: float | None = Field(
        default=None,
        gt=0,
        description="Throughput the model's serving can sustain; the capacity trend warns before it",
    )
    segment_accuracy_warning: float = Field(
        default=0.85, ge=0, le=1, description="ModelSegmentAccuracyDegraded fires below this"
    )
    segment_positive_rate_shift: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="ModelSegmentPositiveRateShift fires when a segment's positive rate moves this far "
        "from the reference's",
    )
    accuracy_warning: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="ModelAccuracyDegraded fires below this (classifiers); the seed's 0.85 when unset. A "
        "ten-class model right 80 % of the time may be healthy",
    )
    accuracy_critical: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="ModelAccuracyCritical fires below this; the seed's 0.75 when unset",
    )
    f1_macro_warning: float = Field(
        default=0.7, ge=0, le=1, description="ModelMacroF1Degraded fires below this (multiclass models)"
    )
    class_recall_warning: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="ModelClassRecallDegraded fires when one class's recall falls below this (multiclass)",
    )
    mae_warning: float | None = Field(
        default=None,
        gt=0,
        description="ModelRegressionErrorHigh fires above this MAE (regression; in the label's unit)",
    )
    mae_critical: float | None = Field(
        default=None, gt=0, description="ModelRegressionErrorCritical fires above this MAE (regression)"
    )
    ndcg_warning: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="ModelRankingQualityDegraded fires when NDCG at a configured k falls below this "
        "(ranking)",
    )
    recommendation_drift_limit: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="ModelRecommendationsShifted fires when the recommended items' distribution is this "
        "far (Jensen-Shannon distance) from the reference's (ranking)",
    )
    mean_error_limit: float | None = Field(
        default=None,
        gt=0,
        description="ModelPredictionsBiased fires when the mean error (prediction - label) is further "
        "from zero than this (regression)",
    )


def _increasing(buckets: tuple[float, ...]) -> tuple[float, ...]:
    if not buckets or buckets[0] <= 0 or any(b <= a for a, b in zip(buckets, buckets[1:], strict=False)):
        raise ValueError("expected strictly increasing positive bucket bounds in seconds")
    return buckets


Buckets = Annotated[tuple[float, ...], AfterValidator(_increasing)]
DEFAULT_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_PIPELINE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


OTHER_SEGMENT = "_other_"
MISSING_SEGMENT = "_missing_"


class Segment(Strict):
    """A low-cardinality column (a merchant category) whose values are measured on their own.

    Only the `max_values` values with the most traffic in the reference (in the window when the
    reference lacks the column) get a label of their own; the rest are `_other_`, so the number
    of exported series stays bounded whatever the column holds.
    """

    column: Name
    max_values: int = Field(default=10, ge=1, le=50)


ModelTask = Literal["binary", "multiclass", "regression", "ranking"]
MAX_LIST_LENGTH = 1000


class Ranking(Strict):
    """A ranking (recommendation) model's cut-offs and list bounds."""

    k: list[int] = Field(
        default_factory=lambda: [5, 10],
        min_length=1,
        max_length=5,
        description="Cut-offs of precision@k, recall@k, NDCG@k and hit rate@k",
    )
    max_list_length: int = Field(
        default=100, ge=1, le=MAX_LIST_LENGTH, description="Longest ranked list a prediction may send"
    )
    catalogue_size: int | None = Field(
        default=None, gt=0, description="Items that could be recommended; the reference's items when unset"
    )

    @model_validator(mode="after")
    def _cutoffs_within_lists(self) -> Ranking:
        _require_unique([str(k) for k in self.k], "cut-off k")
        if any(k < 1 or k > self.max_list_length for k in self.k):
            raise ValueError(f"expected each k between 1 and max_list_length ({self.max_list_length})")
        return self


MAX_CLASSES = 50  # a multiclass model's classes with a label of their own (`_other_` for the rest)
ClassName = Annotated[str, Field(min_length=1, max_length=64)]


class Model(Strict):
    name: Name
    version: str = Field(min_length=1, max_length=64)
    service: Name | None = Field(default=None, description="Topology service that serves this model")
    task: ModelTask = Field(
        default="binary",
        description="binary: a positive class; multiclass: one of `classes`; regression: a number; "
        "ranking: a ranked list of items",
    )
    classes: list[ClassName] = Field(
        default_factory=list,
        max_length=MAX_CLASSES,
        description="A multiclass model's classes; predictions and labels of other classes count as _other_",
    )
    ranking: Ranking = Field(default_factory=Ranking, description="A ranking model's cut-offs and bounds")
    features: list[Feature] = Field(min_length=1)
    prediction_column: str = "prediction"
    score_column: str = "score"
    label_column: str = "label"
    positive_class: str | int | bool = 1
    reference: Reference | None = None
    windows: Windows = Windows()
    thresholds: Thresholds = Thresholds()
    latency_buckets: Buckets = DEFAULT_LATENCY_BUCKETS
    business_metric: str = Field(default="value_caught", pattern=NAME_PATTERN)
    segments: list[Segment] = Field(default_factory=list)

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[Feature]) -> list[Feature]:
        _require_unique([f.name for f in features], "feature")
        return features

    @model_validator(mode="after")
    def _classes_of_the_task(self) -> Model:
        if self.task == "multiclass" and len(self.classes) < 2:
            raise ValueError("a multiclass model lists its classes: expected at least two under 'classes'")
        if self.task != "multiclass" and self.classes:
            raise ValueError(f"'classes' is for multiclass models; this model's task is {self.task!r}")
        _require_unique(self.classes, "class")
        if self.task != "ranking" and "ranking" in self.model_fields_set:
            raise ValueError(f"'ranking' is for ranking models; this model's task is {self.task!r}")
        return self

    @model_validator(mode="after")
    def _segments_are_features(self) -> Model:
        types = {f.name: f.type for f in self.features}
        _require_unique([s.column for s in self.segments], "segment column")
        for segment in self.segments:
            if segment.column not in types:
                raise ValueError(f"segment column {segment.column!r} is not one of the model's features")
            if types[segment.column] in ("text", "embedding"):
                raise ValueError(
                    f"segment column {segment.column!r} is a {types[segment.column]} feature: "
                    "expected a numerical or categorical one"
                )
        return self

    @cached_property
    def embeddings(self) -> dict[str, int]:
        """Each embedding feature's name and length."""
        return {f.name: f.dim for f in self.features if f.dim is not None}


class Dataset(Strict):
    name: Name
    model: Name | None = None
    pipeline: Name | None = None


class Pipeline(Strict):
    name: Name
    window: Duration = timedelta(minutes=15)
    service: Name | None = None
    prefect_deployment: str | None = Field(
        default=None,
        pattern=r"^[^/]+/[^/]+$",
        description="'flow-name/deployment-name' whose runs are read from the Prefect API",
    )
    latency_buckets: Buckets = DEFAULT_PIPELINE_BUCKETS


DEFAULT_FEATURE_LOOKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FeatureValue = bool | float | str


class FeatureView(Strict):
    """A group of features the store serves together, materialised by one job."""

    name: Name
    features: list[Name] = Field(min_length=1)
    max_age: Duration = Field(
        description="How old the newest materialised value may be before FeatureViewStale fires"
    )
    materialized_by: Name | None = Field(
        default=None,
        description="The pipeline (under pipelines) whose runs materialise the view: a run that "
        "handled records and did not fail them all is a materialisation at its end",
    )
    models: list[Name] = Field(
        default_factory=list,
        description="Models that read the view: the null and default share of its features are "
        "measured on their predictions",
    )
    default_values: dict[Name, FeatureValue] = Field(
        default_factory=dict,
        description="The value the store serves for a feature when it has none for the key",
    )

    @model_validator(mode="after")
    def _defaults_are_features(self) -> FeatureView:
        _require_unique(self.features, f"feature of view {self.name!r}")
        for feature in self.default_values:
            if feature not in self.features:
                raise ValueError(f"default_values names {feature!r}, which is not one of the view's features")
        return self


class FeatureStore(Strict):
    """An online feature store: its views' freshness, its lookups' latency and errors."""

    name: Name
    kind: Literal["redis", "feast", "other"] = "other"
    service: Name | None = None
    instance: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Its exporter's `instance` label (redis_exporter for Redis): alerts on that "
        "instance, such as RedisMemoryHigh, are about this store",
    )
    latency_limit_seconds: float = Field(
        default=0.05, gt=0, description="FeatureStoreLatencyHigh fires when a view's p95 lookup exceeds it"
    )
    latency_buckets: Buckets = DEFAULT_FEATURE_LOOKUP_BUCKETS
    window: Duration = Field(
        default=timedelta(minutes=15),
        description="The predictions whose served features' null and default share are measured",
    )
    views: list[FeatureView] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_views(self) -> FeatureStore:
        _require_unique([v.name for v in self.views], f"view of feature store {self.name!r}")
        return self

    @property
    def views_by_name(self) -> dict[str, FeatureView]:
        return {v.name: v for v in self.views}


class Topology(Strict):
    """Service -> the services it depends on, and host -> the services it runs, for correlation."""

    services: dict[Name, list[Name]] = Field(default_factory=dict)
    hosts: dict[Annotated[str, Field(min_length=1, max_length=128)], list[Name]] = Field(
        default_factory=dict,
        description="Node exporter instance (its `instance` label) -> the services running on it: a host "
        "alert joins those services' incidents, as a dependency of theirs",
    )

    @model_validator(mode="after")
    def _known_dependencies(self) -> Topology:
        for service, deps in self.services.items():
            for dep in deps:
                if dep not in self.services:
                    raise ValueError(
                        f"service {service!r} depends on {dep!r}, which is not listed under services"
                    )
        for host, services in self.hosts.items():
            if host in self.services:
                raise ValueError(
                    f"host {host!r} has the name of a service: expected a node exporter instance"
                )
            for service in services:
                if service not in self.services:
                    raise ValueError(f"host {host!r} runs {service!r}, which is not listed under services")
        return self

    def dependencies(self) -> dict[str, list[str]]:
        """Every node of the topology -> the nodes it depends on: a service depends on its services and
        on the hosts that run it (alerts on a host carry the host's instance as their service)."""
        graph: dict[str, list[str]] = {service: list(deps) for service, deps in self.services.items()}
        for host, services in self.hosts.items():
            graph[host] = []
            for service in services:
                graph[service].append(host)
        return graph


# The seed's causal relationships, in Watchkeeper's alert names: a cause alert -> the alerts it explains.
SEED_CAUSAL_RULES: dict[str, list[str]] = {
    "DataQualityDegraded": ["ModelAccuracyDegraded", "ModelAccuracyCritical", "PipelineErrorRateHigh"],
    "DataQualityCritical": ["ModelAccuracyDegraded", "ModelAccuracyCritical", "PipelineErrorRateHigh"],
    "DataDriftDetected": ["ModelAccuracyDegraded", "ModelAccuracyCritical", "BusinessImpactDecline"],
    "SevereDataDrift": ["ModelAccuracyDegraded", "ModelAccuracyCritical", "BusinessImpactCritical"],
    "ModelAccuracyDegraded": ["BusinessImpactDecline"],
    "ModelAccuracyCritical": ["BusinessImpactDecline", "BusinessImpactCritical"],
    "PipelineErrorRateHigh": ["DataQualityDegraded", "ModelLabelCoverageLow", "WatchkeeperEvaluationStale"],
    "PipelineErrorRateCritical": [
        "DataQualityCritical",
        "ModelLabelCoverageLow",
        "WatchkeeperEvaluationStale",
    ],
    "ModelInferenceLatencyHigh": ["ModelThroughputLow", "ModelErrorRateHigh"],
    "ModelInferenceLatencyCritical": ["ModelThroughputLow", "ModelErrorRateHigh", "BusinessImpactDecline"],
    "InfrastructureCPUHigh": ["ModelInferenceLatencyHigh", "ModelThroughputLow"],
    "KafkaBrokerDown": ["PipelineErrorRateHigh", "PipelineLatencyHigh"],
    "RedisMemoryHigh": ["FeatureStoreLatencyHigh", "CacheMissRateHigh"],
}
# The fast-window rules' causes and effects, in the seed's spirit: broken records explain a collapse,
# a failing pipeline explains broken records, a collapse explains a drop in business value.
FAST_CAUSAL_RULES: dict[str, list[str]] = {
    "PipelineErrorRateHigh": ["DataRecordsFailingChecks"],
    "PipelineErrorRateCritical": ["DataRecordsFailingChecksCritical", "DataRecordsFailingChecks"],
    "DataRecordsFailingChecks": ["ModelAccuracyDegraded", "ModelAccuracyCollapse", "DataQualityDegraded"],
    "DataRecordsFailingChecksCritical": [
        "ModelAccuracyCollapse",
        "ModelPredictionCollapse",
        "ModelAccuracyCritical",
        "DataQualityCritical",
    ],
    "DataDriftDetected": ["ModelAccuracyCollapse"],
    "SevereDataDrift": ["ModelAccuracyCollapse", "ModelPredictionCollapse"],
    "ModelPredictionCollapse": ["ModelAccuracyCollapse", "BusinessImpactDrop"],
    "ModelAccuracyCollapse": ["BusinessImpactDrop", "BusinessImpactCritical"],
    "ModelAccuracyDegraded": ["BusinessImpactDrop"],
    "ModelAccuracyCritical": ["BusinessImpactDrop"],
    "ModelInferenceLatencySpike": ["ModelThroughputLow", "ModelErrorBurst", "ModelErrorRateHigh"],
    "ModelThroughputLow": ["BusinessImpactDrop", "BusinessImpactDecline"],
}
# Multiclass, regression and ranking models' quality alerts, in the places the seed gives accuracy: broken or
# drifting inputs explain them, and they explain a fall in business value.
TASK_QUALITY_ALERTS = [
    "ModelBiasBurst",
    "ModelRankingCollapse",
    "ModelRankingQualityDegraded",
    "ModelRecommendationsShifted",
    "ModelMacroF1Degraded",
    "ModelEstimatedMacroF1Degraded",
    "ModelClassRecallDegraded",
    "ModelRegressionErrorHigh",
    "ModelRegressionErrorCritical",
    "ModelPredictionsBiased",
]
TASK_CAUSAL_RULES: dict[str, list[str]] = {
    **{
        cause: TASK_QUALITY_ALERTS
        for cause in (
            "DataQualityDegraded",
            "DataQualityCritical",
            "DataDriftDetected",
            "SevereDataDrift",
            "EmbeddingDriftDetected",
            "DataRecordsFailingChecks",
            "DataRecordsFailingChecksCritical",
        )
    },
    # An embedding that moved explains a classifier's fall as a drifted feature does.
    "EmbeddingDriftDetected": SEED_CAUSAL_RULES["DataDriftDetected"] + TASK_QUALITY_ALERTS,
    **{
        cause: ["BusinessImpactDecline", "BusinessImpactDrop", "BusinessImpactCritical"]
        for cause in TASK_QUALITY_ALERTS
    },
}
# A host short of CPU or memory slows and fails the requests of the models it serves. These relate
# only to alerts on the host's own services (`topology.hosts`), like every causal rule (`_near`).
SERVING_SYMPTOMS = [
    "ModelInferenceLatencyHigh",
    "ModelInferenceLatencyCritical",
    "ModelInferenceLatencySpike",
    "ModelLatencyAnomalous",
    "ModelErrorRateHigh",
    "ModelErrorBurst",
    "ModelErrorRateAnomalous",
    "ModelThroughputLow",
    "ModelThroughputAnomalous",
]
# A disk filling up fails the writes of whatever runs there: requests, pipeline stages, records.
DISK_SYMPTOMS = [
    *SERVING_SYMPTOMS,
    "PipelineErrorRateHigh",
    "PipelineErrorRateCritical",
    "PipelineErrorRateAnomalous",
    "PipelineLatencyHigh",
    "DataRecordsFailingChecks",
    "DataRecordsFailingChecksCritical",
]
HOST_CAUSAL_RULES: dict[str, list[str]] = {
    "InfrastructureCPUHigh": SERVING_SYMPTOMS,
    "HostMemoryPressure": SERVING_SYMPTOMS,
    "HostDiskWillFill": DISK_SYMPTOMS,
    "HostDiskFull": DISK_SYMPTOMS,
}
# Feature stores: memory pressure in Redis slows and fails lookups; slow or failing lookups slow and
# fail the predictions that read them; stale features degrade them; a failing materialising
# pipeline leaves its views stale.
FEATURE_STORE_CAUSAL_RULES: dict[str, list[str]] = {
    "RedisMemoryHigh": ["FeatureStoreLatencyHigh", "FeatureStoreErrorRateHigh"],
    "FeatureStoreLatencyHigh": [
        "ModelInferenceLatencyHigh",
        "ModelInferenceLatencyCritical",
        "ModelInferenceLatencySpike",
        "ModelErrorRateHigh",
        "ModelErrorBurst",
    ],
    "FeatureStoreErrorRateHigh": [
        "ModelErrorRateHigh",
        "ModelErrorBurst",
        "DataRecordsFailingChecks",
        "DataRecordsFailingChecksCritical",
        "DataQualityDegraded",
        "DataQualityCritical",
    ],
    "FeatureViewStale": [
        "DataDriftDetected",
        "SevereDataDrift",
        "ModelAccuracyDegraded",
        "ModelAccuracyCritical",
        "BusinessImpactDecline",
    ],
    "PipelineErrorRateHigh": ["FeatureViewStale"],
    "PipelineErrorRateCritical": ["FeatureViewStale"],
    "InfrastructureCPUHigh": ["FeatureStoreLatencyHigh"],
    "HostMemoryPressure": ["FeatureStoreLatencyHigh"],
}
# The anomaly alerts (watchkeeper/anomalies.py) in the places of their fixed-threshold twins: slow
# requests explain failing and fewer ones, fewer or worse decisions explain lost business value, a
# failing pipeline explains broken records and stale features; and what explains a twin explains
# the anomaly.
QUALITY_COLLAPSES = [
    "ModelAccuracyCollapse",
    "ModelAccuracyCritical",
    "ModelAccuracyDegraded",
    "ModelPredictionCollapse",
]
ANOMALY_CAUSAL_RULES: dict[str, list[str]] = {
    "ModelLatencyAnomalous": [
        "ModelThroughputAnomalous",
        "ModelErrorRateAnomalous",
        "ModelThroughputLow",
        "ModelErrorRateHigh",
        "BusinessImpactAnomalous",
    ],
    "ModelInferenceLatencySpike": ["ModelThroughputAnomalous", "ModelErrorRateAnomalous"],
    "ModelInferenceLatencyHigh": ["ModelThroughputAnomalous", "ModelErrorRateAnomalous"],
    "ModelInferenceLatencyCritical": ["ModelThroughputAnomalous", "ModelErrorRateAnomalous"],
    "ModelErrorRateAnomalous": ["BusinessImpactAnomalous", "BusinessImpactDrop"],
    "ModelThroughputAnomalous": ["BusinessImpactAnomalous", "BusinessImpactDrop", "BusinessImpactDecline"],
    "ModelThroughputLow": ["BusinessImpactAnomalous"],
    **{cause: ["BusinessImpactAnomalous"] for cause in [*QUALITY_COLLAPSES, *TASK_QUALITY_ALERTS]},
    "PipelineErrorRateAnomalous": [
        "DataRecordsFailingChecks",
        "DataRecordsFailingChecksCritical",
        "DataQualityDegraded",
        "DataQualityCritical",
        "ModelLabelCoverageLow",
        "FeatureViewStale",
    ],
    "FeatureStoreLatencyHigh": ["ModelLatencyAnomalous", "ModelErrorRateAnomalous"],
    "FeatureStoreErrorRateHigh": ["ModelErrorRateAnomalous"],
    "KafkaBrokerDown": ["PipelineErrorRateAnomalous"],
}
DEFAULT_CAUSAL_RULES = {
    cause: list(
        dict.fromkeys(
            [
                *SEED_CAUSAL_RULES.get(cause, []),
                *FAST_CAUSAL_RULES.get(cause, []),
                *TASK_CAUSAL_RULES.get(cause, []),
                *HOST_CAUSAL_RULES.get(cause, []),
                *FEATURE_STORE_CAUSAL_RULES.get(cause, []),
                *ANOMALY_CAUSAL_RULES.get(cause, []),
            ]
        )
    )
    for cause in (
        SEED_CAUSAL_RULES
        | FAST_CAUSAL_RULES
        | TASK_CAUSAL_RULES
        | HOST_CAUSAL_RULES
        | FEATURE_STORE_CAUSAL_RULES
        | ANOMALY_CAUSAL_RULES
    )
}


class Correlation(Strict):
    """How alerts are grouped into incidents (see tasks/correlation.py for the rules)."""

    window: Duration = Field(default=timedelta(minutes=10), description="Alerts further apart never group")
    quiet_period: Duration = Field(
        default=timedelta(minutes=5), description="A resolved incident takes no new alert after this"
    )
    dependency_hops: int = Field(default=2, ge=1, description="How far along the topology a relation reaches")
    similarity_threshold: float = Field(default=0.6, gt=0, le=1)
    causal_rules: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_CAUSAL_RULES))


class NotificationTarget(Strict):
    name: Name
    kind: Literal["slack", "pagerduty", "webhook", "email"]
    url: str | None = Field(default=None, description="Endpoint that is not itself a secret")
    secret: SecretRef | None = Field(
        default=None, description="Webhook URL, routing key or password, by reference"
    )
    to: list[str] = Field(default_factory=list)


class KubernetesTarget(Strict):
    namespace: str = Field(default="default", min_length=1)
    deployment: str = Field(min_length=1, description="Deployment name; may use {label} placeholders")


class ScaleAction(KubernetesTarget):
    """Scale a Deployment through its scale subresource, never outside [min_replicas, max_replicas]."""

    action: Literal["scale"]
    step: int = Field(default=1, description="Replicas to add (negative to remove)")
    factor: float | None = Field(default=None, gt=0, description="Multiply replicas instead of adding")
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(ge=1, description="Ceiling: never scaled above")

    @model_validator(mode="after")
    def _bounds(self) -> ScaleAction:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class RestartAction(KubernetesTarget):
    """Rolling restart: the kubectl.kubernetes.io/restartedAt annotation on the pod template."""

    action: Literal["restart"]


def _url_host(url: str) -> str | None:
    """The host of a URL template, None when a placeholder stands in its authority."""
    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if "{" in authority:
        return None
    return urlsplit(url).hostname


class OutboundHttp(Strict):
    """An action that calls an HTTP endpoint: which hosts it may reach, and whether a repeat is safe."""

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts the rendered URL may name; default: the host written in url",
    )

    def hosts_for(self, url: str | None) -> list[str]:
        if self.allowed_hosts:
            return list(self.allowed_hosts)
        host = _url_host(url) if url else None
        return [host] if host else []

    def _check_hosts(self, url: str | None) -> None:
        if url and not self.hosts_for(url):
            raise ValueError(
                f"url {url!r} takes its host from a placeholder: list the hosts it may reach in allowed_hosts"
            )


class FallbackAction(OutboundHttp):
    """Send a model's traffic to its stable model: through an HTTP model router, or by pointing a
    Kubernetes Service's selector at the stable model's pods."""

    action: Literal["fallback_model"]
    stable_models: dict[str, str] = Field(min_length=1, description="model name -> stable model to use")
    via: Literal["router", "service"] = "router"
    url: str | None = Field(default=None, description="Router endpoint (via: router); may use placeholders")
    body: dict[str, Any] = Field(
        default_factory=lambda: {"model": "{model_name}", "fallback_model": "{stable_model}"}
    )
    secret: SecretRef | None = Field(default=None, description="Bearer token for the router")
    namespace: str = "default"
    service: str | None = Field(default=None, description="Service to re-point (via: service)")
    selector_label: str = Field(default="model", description="Pod label the Service selects models by")
    revert_on_resolve: bool = True
    idempotent: bool = Field(
        default=False, description="The router does the same when called twice (a re-send after a crash)"
    )

    @model_validator(mode="after")
    def _endpoint(self) -> FallbackAction:
        if self.via == "router" and not self.url:
            raise ValueError("via: router needs url")
        if self.via == "service" and not self.service:
            raise ValueError("via: service needs service")
        self._check_hosts(self.url)
        return self


class HttpAction(OutboundHttp):
    """Circuit breaker or cache invalidation through an HTTP endpoint."""

    action: Literal["circuit_breaker", "invalidate_cache"]
    url: str = Field(min_length=1, description="Endpoint; may use {label} placeholders")
    method: Literal["POST", "PUT", "DELETE"] = "POST"
    body: dict[str, Any] = Field(default_factory=dict)
    secret: SecretRef | None = None
    idempotent: bool = Field(
        default=False, description="The endpoint does the same when called twice (a re-send after a crash)"
    )

    @model_validator(mode="after")
    def _hosts(self) -> HttpAction:
        self._check_hosts(self.url)
        return self


class NotifyAction(Strict):
    action: Literal["notify"]
    target: Name = Field(description="A name under notifications")


class TicketAction(OutboundHttp):
    """Open a ticket (Jira-compatible body) through a REST endpoint; comment on it on resolution."""

    action: Literal["ticket"]
    url: str = Field(min_length=1, description="Base URL: POST {url}/issue, POST {url}/issue/{id}/comment")
    project: str = Field(min_length=1)
    issue_type: str = "Incident"
    secret: SecretRef | None = None

    @model_validator(mode="after")
    def _hosts(self) -> TicketAction:
        self._check_hosts(self.url)
        return self


PlaybookAction = Annotated[
    ScaleAction | RestartAction | FallbackAction | HttpAction | NotifyAction | TicketAction,
    Field(discriminator="action"),
]


class PlaybookMatch(Strict):
    alertname: str = Field(min_length=1)
    severity: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="Exact label values the alert must have")


class Playbook(Strict):
    name: Name
    match: PlaybookMatch
    actions: list[PlaybookAction] = Field(min_length=1)
    enabled: bool = Field(default=False, description="Until enabled, every action is a dry run")
    require_approval: bool = False
    approval_timeout: Duration = timedelta(minutes=15)
    escalate_to: Name | None = Field(
        default=None,
        description="Notification target paged when approval times out, or when the incident is "
        "neither acknowledged nor resolved within escalation_time",
    )
    escalation_time: Duration | None = Field(
        default=None, description="Page escalate_to (once) when nobody acknowledged the incident by then"
    )
    manual_actions: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        description='Steps left to people ("review recent deployments"): the incident\'s checklist',
    )
    cooldown: Duration = Field(default=timedelta(minutes=15), description="Per action and target")

    @model_validator(mode="after")
    def _escalation_has_a_target(self) -> Playbook:
        if self.escalation_time is not None and self.escalate_to is None:
            raise ValueError("escalation_time needs escalate_to: the target paged")
        _require_unique(self.manual_actions, "manual action")
        return self


class KubernetesAccess(Strict):
    kubeconfig: Path | None = Field(
        default=None, description="Path to a kubeconfig; in-cluster config when unset"
    )
    context: str | None = None


class MaintenanceWindow(Strict):
    """No remediation while it lasts: from `start` to `end`, once, or again every `every`."""

    name: Name
    start: UtcTime
    end: UtcTime
    every: Duration | None = Field(default=None, description="Repeat period, e.g. 7d for a weekly window")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Only alerts with these label values; all alerts when empty"
    )

    @model_validator(mode="after")
    def _span(self) -> MaintenanceWindow:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.every is not None and self.every < self.end - self.start:
            raise ValueError("every must be at least as long as the window")
        return self

    def active_until(self, now: datetime, labels: Mapping[str, str]) -> datetime | None:
        """When the window that contains `now` ends, or None when none does (or the labels differ)."""
        if any(labels.get(k) != v for k, v in self.labels.items()) or now < self.start:
            return None
        offset = now - self.start
        if self.every is not None:
            offset = offset % self.every
        return now - offset + (self.end - self.start) if offset < self.end - self.start else None


class Remediation(Strict):
    max_actions_per_hour: int = Field(
        default=20, ge=0, description="Actions run (not dry runs) per hour, all playbooks"
    )
    kubernetes: KubernetesAccess = KubernetesAccess()
    action_timeout: Duration = timedelta(seconds=20)
    alertmanager_url: str | None = Field(
        default=None,
        description="Asked before acting whether the alert is now silenced or inhibited "
        "(WATCHKEEPER_ALERTMANAGER_URL overrides it)",
    )
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list)
    playbooks: list[Playbook] = Field(default_factory=list)


class Schedules(Strict):
    collect_model_metrics: Duration = timedelta(minutes=1)
    evaluate_drift: Duration = timedelta(minutes=15)
    evaluate_data_quality: Duration = timedelta(minutes=15)
    pipeline_health: Duration = timedelta(minutes=1)
    reconcile_remediation: Duration = timedelta(minutes=1)
    retention: Duration = timedelta(hours=1)
    model_report: Duration = timedelta(days=1)


class Reports(Strict):
    """The model report: each `schedules.model_report`, every model's last `period`, delivered to
    `deliver_to` (notification targets: Slack gets a summary with the key figures, e-mail the HTML)."""

    period: Duration = Field(
        default=timedelta(days=1), description="How far back each scheduled report looks"
    )
    first_after: Duration = Field(
        default=timedelta(minutes=5), description="The first scheduled report, this long after start-up"
    )
    deliver_to: list[Name] = Field(default_factory=list)
    evidently_ui_url: str | None = Field(
        default=None, description="`evidently ui` address: drift snapshots are linked there"
    )
    public_url: str | None = Field(
        default=None, description="Watchkeeper's address as readers reach it: reports link to /v1/reports"
    )


class Retention(Strict):
    """How long Watchkeeper keeps what it stores (see tasks/retention.py); the retention flow deletes
    older rows in batches of `batch_size`."""

    predictions: Duration = timedelta(days=30)
    feedback: Duration = timedelta(days=30)
    pipeline_runs: Duration = timedelta(days=30)
    feature_lookups: Duration = timedelta(days=14)
    aggregates: Duration = Field(
        default=timedelta(days=30), description="The intake's per-bucket aggregates of each model"
    )
    samples: Duration = Field(
        default=timedelta(days=14), description="The drift and data-quality sample of each bucket"
    )
    evaluation_results: Duration = timedelta(days=90)
    results_every: Duration = Field(
        default=timedelta(minutes=5),
        description="The collection's traffic and quality results join the history once in this "
        "long (every cycle's latest window still reaches /metrics; Prometheus keeps the fine series)",
    )
    incidents: Duration = Field(
        default=timedelta(days=90), description="Resolved incidents, their timeline and actions"
    )
    alerts: Duration = Field(
        default=timedelta(days=90), description="Alerts and notifications no kept incident refers to"
    )
    outbox: Duration = Field(default=timedelta(days=7), description="Flow runs already started in Prefect")
    reports: Duration = Field(
        default=timedelta(days=30),
        description="Model reports, their deliveries, HTML drift reports and Evidently snapshots",
    )
    batch_size: int = Field(default=5000, ge=1)

    def ages(self) -> dict[str, timedelta]:
        return self.model_dump(exclude={"batch_size", "results_every"})


DEFAULT_SAMPLE_PER_BUCKET = 200


def _raw_fraction(value: Any) -> Any:
    """`all`, `none`, a share such as `1%`, or a number in [0, 1]."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"all", "none"}:
            return 1.0 if text == "all" else 0.0
        if text.endswith("%"):
            try:
                return float(text[:-1]) / 100
            except ValueError:
                return value
    return value


class Intake(Strict):
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_records: int = Field(default=100_000, gt=0)
    bucket: Duration = Field(
        default=timedelta(minutes=1),
        description="Time bucket of the aggregates kept as records arrive; windows are sums of buckets",
    )
    raw_predictions: Annotated[float, BeforeValidator(_raw_fraction)] = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Raw prediction rows kept: all, none, or a share (1%) chosen by request id",
    )
    dedupe_window: Duration = Field(
        default=timedelta(hours=1),
        description="A re-sent request id within this long of the first is never counted twice",
    )
    sample_per_bucket: int = Field(
        default=DEFAULT_SAMPLE_PER_BUCKET,
        ge=10,
        le=100_000,
        description="Predictions per model and bucket kept for drift and data quality (by request id)",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Service processes answering on one port: parsing and checks run side by side "
        "(one Python process uses one core at most); on SQLite their writes still take turns",
    )

    @field_validator("bucket")
    @classmethod
    def _whole_seconds_dividing_a_day(cls, bucket: timedelta) -> timedelta:
        seconds = bucket.total_seconds()
        if seconds < 1 or not seconds.is_integer() or 86_400 % int(seconds):
            raise ValueError("expected whole seconds that divide a day (10s, 1m, 5m, 1h)")
        return bucket


class ExecutorLanes(Strict):
    """The warm executor's lanes: how many runs of each kind execute at once in its process.

    Each lane has its own slots, so a long backfill or a slow drift evaluation never delays
    handle-alerts. A run paused for an approval lends its slot while it waits and holds only a
    thread (polling Prefect every second); at most `max_waiting` runs wait at once per lane, and
    beyond that new runs stay `Scheduled` in Prefect until one is answered or times out.
    """

    alerts: int = Field(default=4, ge=1, description="handle-alerts runs at once")
    scheduled: int = Field(default=2, ge=1, description="Scheduled evaluations and upkeep at once")
    ad_hoc: int = Field(default=1, ge=1, description="Ad-hoc runs (backfill-drift) at once")
    max_waiting: int = Field(default=32, ge=0, description="Runs paused for people, per lane")


PASSWORD_HASH_PATTERN = r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$"


class User(Strict):
    """A person who reads incidents (`viewer`) or also acts on them (`operator`), signing in with
    their own token or password; their name is what the timeline, the audit trail and the assignee
    show."""

    name: Name
    role: Literal["operator", "viewer"]
    token: SecretRef | None = Field(default=None, description="Their API token (sent as a bearer token)")
    password_hash: str | None = Field(
        default=None,
        pattern=PASSWORD_HASH_PATTERN,
        description="Their password's salted hash, as `watchkeeper users hash-password` prints it",
    )

    @model_validator(mode="after")
    def _some_credential(self) -> User:
        if self.token is None and self.password_hash is None:
            raise ValueError(f"user {self.name!r} has no credential: expected 'token' or 'password_hash'")
        return self


class Traces(Strict):
    """Where people open a trace: Watchkeeper sends spans to whatever OTEL_EXPORTER_OTLP_ENDPOINT
    names (see watchkeeper/tracing.py) and links incidents to them with this template."""

    link: str | None = Field(
        default=None,
        description="A trace's page, with {trace_id}: Jaeger http://host:16686/trace/{trace_id}, "
        "Zipkin http://host:9411/zipkin/traces/{trace_id}, Tempo through Grafana's Explore URL",
    )

    @field_validator("link")
    @classmethod
    def _has_the_trace_id(cls, link: str | None) -> str | None:
        if link is not None and not (link.startswith(("http://", "https://")) and "{trace_id}" in link):
            raise ValueError("expected an http(s) URL with {trace_id} where the trace id goes")
        return link

    def url(self, trace_id: str | None) -> str | None:
        return self.link.replace("{trace_id}", trace_id) if self.link and trace_id else None


class UILinks(Strict):
    """Base URLs the incident page links to (none: no such link); Evidently's is
    `reports.evidently_ui_url`."""

    prefect_url: str | None = Field(default=None, description="The Prefect UI, e.g. http://127.0.0.1:4200")
    grafana_url: str | None = Field(default=None, description="Grafana, with Watchkeeper's dashboards")


class WatchkeeperConfig(Strict):
    models: list[Model] = Field(min_length=1)
    datasets: list[Dataset] = Field(default_factory=list)
    pipelines: list[Pipeline] = Field(default_factory=list)
    topology: Topology = Topology()
    correlation: Correlation = Correlation()
    notifications: list[NotificationTarget] = Field(default_factory=list)
    remediation: Remediation = Remediation()
    schedules: Schedules = Schedules()
    intake: Intake = Intake()
    retention: Retention = Retention()
    executor: ExecutorLanes = ExecutorLanes()
    reports: Reports = Reports()
    traces: Traces = Traces()
    feature_stores: list[FeatureStore] = Field(default_factory=list)
    users: list[User] = Field(default_factory=list)
    ui: UILinks = UILinks()

    @model_validator(mode="after")
    def _cross_references(self) -> WatchkeeperConfig:
        _require_unique([m.name for m in self.models], "model")
        _require_unique([d.name for d in self.datasets], "dataset")
        _require_unique([p.name for p in self.pipelines], "pipeline")
        _require_unique([n.name for n in self.notifications], "notification target")
        _require_unique([u.name for u in self.users], "user")
        _require_unique([p.name for p in self.remediation.playbooks], "playbook")
        targets = {n.name for n in self.notifications}
        for playbook in self.remediation.playbooks:
            named = [a.target for a in playbook.actions if isinstance(a, NotifyAction)]
            for name in [*named, *([playbook.escalate_to] if playbook.escalate_to else [])]:
                if name not in targets:
                    raise ValueError(
                        f"playbook {playbook.name!r} notifies {name!r}, which is not under notifications"
                    )
        kinds = {n.name: n.kind for n in self.notifications}
        for name in self.reports.deliver_to:
            if name not in targets:
                raise ValueError(f"reports.deliver_to names {name!r}, which is not under notifications")
            if kinds[name] == "pagerduty":
                raise ValueError(f"reports.deliver_to names {name!r}: PagerDuty pages incidents, not reports")
        models = {m.name for m in self.models}
        pipelines = {p.name for p in self.pipelines}
        for d in self.datasets:
            if d.model is not None and d.model not in models:
                raise ValueError(f"dataset {d.name!r} names model {d.model!r}, which is not under models")
            if d.pipeline is not None and d.pipeline not in pipelines:
                raise ValueError(
                    f"dataset {d.name!r} names pipeline {d.pipeline!r}, which is not under pipelines"
                )
        self._check_feature_stores(models, pipelines)
        services = self.topology.services
        for owner in [*self.models, *self.pipelines, *self.feature_stores]:
            if owner.service is not None and services and owner.service not in services:
                raise ValueError(
                    f"{owner.name!r} names service {owner.service!r}, which is not under topology"
                )
        return self

    def _check_feature_stores(self, models: set[str], pipelines: set[str]) -> None:
        _require_unique([f.name for f in self.feature_stores], "feature store")
        for store in self.feature_stores:
            for view in store.views:
                where = f"feature store {store.name!r}, view {view.name!r}"
                if view.materialized_by is not None and view.materialized_by not in pipelines:
                    raise ValueError(
                        f"{where}: materialized_by names {view.materialized_by!r}, "
                        "which is not under pipelines"
                    )
                for model in view.models:
                    if model not in models:
                        raise ValueError(f"{where}: names model {model!r}, which is not under models")
                    missing = set(view.features) - {f.name for f in self.models_by_name[model].features}
                    if missing:
                        raise ValueError(
                            f"{where}: model {model!r} has no feature {', '.join(sorted(missing))}: "
                            "expected the view's features among the model's"
                        )

    @property
    def manual_actions(self) -> dict[str, list[str]]:
        """Each playbook's steps left to people, by playbook name."""
        return {p.name: p.manual_actions for p in self.remediation.playbooks}

    @property
    def feature_stores_by_name(self) -> dict[str, FeatureStore]:
        return {f.name: f for f in self.feature_stores}

    @property
    def models_by_name(self) -> dict[str, Model]:
        return {m.name: m for m in self.models}

    @property
    def pipelines_by_name(self) -> dict[str, Pipeline]:
        return {p.name: p for p in self.pipelines}

    def model(self, name: str) -> Model | None:
        return self.models_by_name.get(name)

    def datasets_of(self, model_name: str) -> list[Dataset]:
        """The datasets whose records `model_name` serves (its data quality, its pipelines)."""
        return [d for d in self.datasets if d.model == model_name]


def _require_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} is listed twice")
        seen.add(name)


def format_location(loc: tuple[int | str, ...]) -> str:
    """('models', 0, 'features', 2, 'type') -> 'models[0].features[2].type'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in {"FileReference", "SqlReference", "PeriodReference"} or "[" in str(part):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def describe_errors(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{format_location(tuple(item['loc']))}: {message}")
    return lines


def load_config(path: Path | str, home: Path | None = None) -> WatchkeeperConfig:
    """The configuration at `path`; `home` (default WATCHKEEPER_HOME) is what `{home}` in a path means."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return WatchkeeperConfig.model_validate(raw, context={"base_dir": path.parent, "home": home})
    except ValidationError as exc:
        details = "\n".join(f"  {line}" for line in describe_errors(exc))
        raise ConfigError(f"{path}: invalid configuration:\n{details}") from exc
