"""Drift of each feature and of the prediction against a reference, computed by Evidently.

Evidently does the statistics: one `ValueDrift` per column, with the method and threshold from the
config or Evidently's own defaults. A distance method's verdict is Evidently's test status. A
p-value method's verdict is corrected for testing many features at once: each test flags about 5%
of stable columns by chance, so a model with 20 features would see a false "drift" in most windows.
Watchkeeper adjusts the p-values of a model's p-value tests by Benjamini-Hochberg (false discovery
rate) and a column drifted when its adjusted p-value is below its threshold. Watchkeeper picks the
windows, counts the drifted share and keeps the results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.legacy.calculations.stattests.registry import (
    StatTest,
    StatTestNotFoundError,
    get_registered_stattest,
    register_stattest,
)
from evidently.legacy.core import ColumnType
from evidently.metrics import ValueDrift
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy.stats import chi2_contingency
from sqlalchemy import func, select

from tasks.embeddings import EmbeddingDrift, embedding_drift, vectors
from tasks.evidently_workspace import add_drift_snapshot
from tasks.logs import prediction_frame, reference_frame
from tasks.metrics import Measurement, Window, save_results
from tasks.text_descriptors import text_descriptors
from watchkeeper.config import DEFAULT_DRIFT_P_VALUE, Model
from watchkeeper.intake.kinds import RANKING, is_regression
from watchkeeper.markdown import table
from watchkeeper.store import Store
from watchkeeper.store.samples import Sampling
from watchkeeper.store.schema import EvaluationResult

DRIFT = "drift"
FAILED = "FAIL"
# Evidently's drift statistics need at least this many non-null values on each side.
MIN_VALUES = 2


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str  # a feature type: "numerical", "categorical", "text" or "embedding"
    method: str | None = None
    threshold: float | None = None
    dim: int | None = None  # an embedding's length


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool
    adjusted_p_value: float | None = None  # p-value methods: Benjamini-Hochberg across the model's tests


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Adjusted p-values (Benjamini & Hochberg, 1995), in the order given: comparing each to the
    level alpha keeps the expected share of false discoveries among the flagged ones under alpha."""
    count = len(p_values)
    order = sorted(range(count), key=lambda i: p_values[i])
    adjusted = [0.0] * count
    running = 1.0
    for rank in range(count, 0, -1):
        index = order[rank - 1]
        running = min(running, p_values[index] * count / rank)
        adjusted[index] = running
    return adjusted


def controlled(columns: list[ColumnDrift]) -> list[ColumnDrift]:
    """Each p-value column's verdict from its Benjamini-Hochberg adjusted p-value; distances as they are."""
    tested = [i for i, c in enumerate(columns) if is_p_value(c.method)]
    adjusted = benjamini_hochberg([columns[i].score for i in tested])
    result = list(columns)
    for i, q in zip(tested, adjusted, strict=True):
        column = columns[i]
        result[i] = replace(column, adjusted_p_value=q, drifted=q < column.threshold)
    return result


@dataclass
class DriftResult:
    columns: list[ColumnDrift]
    share: float
    drift_share_threshold: float
    dataset_drift: bool
    reference_rows: int
    current_rows: int
    prediction: ColumnDrift | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    snapshot: Snapshot | None = field(default=None, repr=False)
    embeddings: list[EmbeddingDrift] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "columns": [asdict(c) for c in self.columns],
            "embeddings": [asdict(e) for e in self.embeddings],
            "share": self.share,
            "drift_share_threshold": self.drift_share_threshold,
            "dataset_drift": self.dataset_drift,
            "prediction": asdict(self.prediction) if self.prediction else None,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "skipped": self.skipped,
        }

    def measurements(self) -> list[Measurement]:
        found = [
            Measurement("drift_share", self.share),
            Measurement("dataset_drift", float(self.dataset_drift)),
        ]
        for c in self.columns:
            method = {"method": c.method, "threshold": c.threshold}
            score = "drift_p_value" if is_p_value(c.method) else "drift_score"
            found += [
                Measurement(score, c.score, {"feature_name": c.column}, method),
                Measurement("drift_detected", float(c.drifted), {"feature_name": c.column}, method),
            ]
            if c.adjusted_p_value is not None:
                found.append(
                    Measurement(
                        "drift_adjusted_p_value", c.adjusted_p_value, {"feature_name": c.column}, method
                    )
                )
        for e in self.embeddings:
            feature, method = {"feature_name": e.feature}, {"method": e.method, "threshold": e.threshold}
            found += [
                Measurement("embedding_drift_score", e.score, feature, {**method, "p_value": e.p_value}),
                Measurement("embedding_drift_detected", float(e.drifted), feature, method),
                Measurement("embedding_centroid_distance", e.centroid_distance, feature),
            ]
        if self.prediction is not None:
            found.append(Measurement("prediction_drift_score", self.prediction.score))
            found.append(Measurement("prediction_drift_detected", float(self.prediction.drifted)))
        return found + row_counts(self.reference_rows, self.current_rows)


def is_p_value(method: str) -> bool:
    """Whether the method's score is a p-value (low means drift) rather than a distance (high means drift).

    Auto-resolved methods carry Evidently's display name ("K-S p_value"); named ones their
    registered name ("ks"), whose display name says the same.
    """
    if "p_value" in method:
        return True
    for column_type in (ColumnType.Numerical, ColumnType.Categorical):
        try:
            return "p_value" in get_registered_stattest(method, column_type).display_name
        except (KeyError, ValueError, StatTestNotFoundError):
            continue
    return False


def row_counts(reference_rows: int, current_rows: int) -> list[Measurement]:
    return [
        Measurement("reference_rows", float(reference_rows)),
        Measurement("current_rows", float(current_rows)),
    ]


def infer_columns(
    reference: pd.DataFrame, columns: list[str] | None = None, max_categories: int = 20
) -> list[ColumnSpec]:
    """Numbers with many distinct values are numerical; everything else is categorical."""
    specs = []
    for name in columns or list(reference.columns):
        if name not in reference.columns:
            raise KeyError(f"column {name!r} is not in the reference data")
        series = reference[name]
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        kind = "numerical" if numeric and series.nunique() > max_categories else "categorical"
        specs.append(ColumnSpec(name, kind))
    return specs


SMALL_WINDOW_ROWS = 1000
TWO_SAMPLE_CHI_SQUARE = "chisquare_two_sample"


def two_sample_chi_square(reference: pd.Series, current: pd.Series) -> float:
    """The p-value that both samples come from one categorical distribution (Pearson's test of
    homogeneity on the 2 x k table of counts).

    Evidently's `chisquare` tests the current counts against the reference's proportions as if those
    were exact, which overstates the evidence as soon as the window is not much smaller than the
    reference: on stable uniform data with 20 values it flags 16% of 1,000-row windows against
    5,000 reference rows at the 5% level (33% of 400-row windows against 1,000), where this test
    flags 5%.
    """
    counts = pd.concat([reference.value_counts(), current.value_counts()], axis=1).fillna(0)
    if len(counts) < 2:
        return 1.0
    return float(chi2_contingency(counts.to_numpy(dtype=float).T, correction=False).pvalue)


def _two_sample_chi_square_test(
    reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
) -> tuple[float, bool]:
    p_value = two_sample_chi_square(reference, current)
    return p_value, p_value < threshold


register_stattest(
    StatTest(
        name=TWO_SAMPLE_CHI_SQUARE,
        display_name="two-sample chi-square p_value",
        allowed_feature_types=[ColumnType.Categorical, ColumnType.Numerical],
        default_threshold=DEFAULT_DRIFT_P_VALUE,
    ),
    default_impl=_two_sample_chi_square_test,
)


def chosen_method(
    spec: ColumnSpec, reference: pd.DataFrame, current: pd.DataFrame, p_value_level: float
) -> ColumnSpec:
    """The column's test, with its level when it is a p-value test and none is configured.

    Evidently picks its default by the reference's size alone: above 1,000 reference rows a
    distance with a fixed 0.1 threshold, whatever the window. A distance measured on a few hundred
    rows is biased upwards (the demo's 20-valued `car`: 0.12 on a stable 200-row window against
    5,000 reference rows), so a small window against a large reference would drift on noise. When
    either side holds 1,000 rows or fewer, an unconfigured column gets a two-sample test whose
    p-value accounts for both sizes: K-S for numbers with more than 5 values, a z-test for
    categories with two values, chi-square (two-sample, see `two_sample_chi_square`) otherwise.

    Evidently's tests default to the 5% level, made for a one-off report. Monitoring repeats the
    test every evaluation, so a stable model would be flagged about once in 20 evaluations (several
    times a day); a p-value test without a configured threshold uses the model's `drift_p_value`.
    """
    if spec.method is None and min(len(current), len(reference)) <= SMALL_WINDOW_ROWS:
        values = pd.concat([reference[spec.name], current[spec.name]]).nunique()
        if spec.type == "numerical" and values > 5:
            spec = replace(spec, method="ks")
        else:  # Evidently's z-test takes categories only
            two_values = values <= 2 and spec.type == "categorical"
            spec = replace(spec, method="z" if two_values else TWO_SAMPLE_CHI_SQUARE)
    if spec.threshold is None and spec.method is not None and is_p_value(spec.method):
        spec = replace(spec, threshold=p_value_level)
    return spec


Matrices = tuple[np.ndarray, np.ndarray]  # an embedding's reference and current vectors


def _usable(
    spec: ColumnSpec, reference: pd.DataFrame, current: pd.DataFrame, vectors_of: Matrices | None = None
) -> str | None:
    """Why a column cannot be tested, or None when it can (an embedding by its parsed vectors)."""
    for index, (side, frame) in enumerate((("reference", reference), ("current", current))):
        if spec.name not in frame.columns:
            return f"missing from the {side} data"
        if vectors_of is not None:
            if len(vectors_of[index]) < MIN_VALUES:
                return f"fewer than {MIN_VALUES} vectors of {spec.dim} numbers in the {side} data"
        elif frame[spec.name].notna().sum() < MIN_VALUES:
            return f"fewer than {MIN_VALUES} non-null values in the {side} data"
    return None


def _embedding_vectors(
    features: list[ColumnSpec], reference: pd.DataFrame, current: pd.DataFrame
) -> dict[str, Matrices]:
    """Each embedding present on both sides, its vectors parsed once (`embeddings.embedding_drift`
    takes its own sample of them)."""
    return {
        spec.name: (vectors(reference[spec.name], spec.dim), vectors(current[spec.name], spec.dim))
        for spec in features
        if spec.dim is not None and spec.name in reference and spec.name in current
    }


def _with_descriptors(
    reference: pd.DataFrame, current: pd.DataFrame, specs: list[ColumnSpec]
) -> tuple[pd.DataFrame, pd.DataFrame, list[ColumnSpec]]:
    """Each text feature replaced by its descriptors (`tasks.text_descriptors`), numerical columns
    tested with the feature's method and threshold."""
    tested: list[ColumnSpec] = []
    for spec in specs:
        if spec.type != "text":
            tested.append(spec)
            continue
        reference_descriptors, current_descriptors = text_descriptors(
            spec.name, reference[spec.name], current[spec.name]
        )
        reference = pd.concat([reference, reference_descriptors], axis=1)
        current = pd.concat([current, current_descriptors], axis=1)
        tested += [
            ColumnSpec(column, "numerical", spec.method, spec.threshold) for column in reference_descriptors
        ]
    return reference, current, tested


def _column_results(snapshot: Snapshot) -> dict[str, ColumnDrift]:
    payload = snapshot.dict()
    failed = {t["metric_config"]["metric_id"] for t in payload.get("tests", []) if t["status"] == FAILED}
    results = {}
    for metric in payload["metrics"]:
        config = metric["config"]
        results[config["column"]] = ColumnDrift(
            column=config["column"],
            method=config["method"],
            score=float(metric["value"]),
            threshold=float(config["threshold"]),
            drifted=metric["id"] in failed,
        )
    return results


def _evidently_frame(frame: pd.DataFrame, specs: list[ColumnSpec]) -> pd.DataFrame:
    """Only the tested columns, numerical ones as floats (None from JSON becomes NaN)."""
    data = {}
    for spec in specs:
        column = frame[spec.name]
        data[spec.name] = (
            pd.to_numeric(column, errors="coerce") if spec.type == "numerical" else column.astype("string")
        )
    return pd.DataFrame(data)


SAMPLE_SEED = 20261126


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    return frame.sample(n=rows, random_state=SAMPLE_SEED) if len(frame) > rows else frame


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[ColumnSpec],
    drift_share: float = 0.5,
    prediction: ColumnSpec | None = None,
    timestamp: Any = None,
    sample_rows: int | None = None,
    p_value_level: float = DEFAULT_DRIFT_P_VALUE,
) -> DriftResult:
    """Per-feature drift, the drifted share and (optionally) prediction drift, in one Evidently
    Report; a text feature by its descriptors, an embedding by Evidently's embedding method
    (`tasks.embeddings`), each embedding one feature in the share.

    With `sample_rows`, each side is tested on a uniform random sample of at most that many rows
    (fixed seed): distance-based scores barely move, and large windows take a fraction of the time.
    """
    embedded = _embedding_vectors(features, reference, current)
    skipped = {
        spec.name: why
        for spec in features
        if (why := _usable(spec, reference, current, embedded.get(spec.name)))
    }
    tested = [spec for spec in features if spec.name not in skipped]
    reference_rows, current_rows = len(reference), len(current)
    if sample_rows is not None:
        reference, current = (_sample(frame, sample_rows) for frame in (reference, current))
    embeddings = [
        embedding_drift(spec.name, *embedded[spec.name], spec.method, spec.threshold, p_value_level)
        for spec in tested
        if spec.dim is not None
    ]
    reference, current, tested = _with_descriptors(
        reference, current, [spec for spec in tested if spec.dim is None]
    )
    if prediction is not None and _usable(prediction, reference, current) is None:
        tested.append(prediction)
    chosen = {s.name: chosen_method(s, reference, current, p_value_level) for s in tested}
    tested = [chosen[s.name] for s in tested]
    prediction = chosen.get(prediction.name) if prediction is not None else None
    snapshot = _report(reference, current, tested, timestamp) if tested else None
    by_column = _column_results(snapshot) if snapshot is not None else {}
    columns = controlled([by_column[s.name] for s in tested if s is not prediction])
    verdicts = [c.drifted for c in columns] + [e.drifted for e in embeddings]
    share = sum(verdicts) / len(verdicts) if verdicts else 0.0
    return DriftResult(
        columns=columns,
        share=share,
        drift_share_threshold=drift_share,
        dataset_drift=bool(verdicts) and share >= drift_share,
        reference_rows=reference_rows,
        current_rows=current_rows,
        prediction=by_column.get(prediction.name) if prediction is not None else None,
        skipped=skipped,
        snapshot=snapshot,
        embeddings=embeddings,
    )


def _report(
    reference: pd.DataFrame, current: pd.DataFrame, tested: list[ColumnSpec], timestamp: Any
) -> Snapshot:
    """One Evidently Report of every numerical and categorical column's drift, with its tests."""
    definition = DataDefinition(
        numerical_columns=[s.name for s in tested if s.type == "numerical"],
        categorical_columns=[s.name for s in tested if s.type == "categorical"],
    )
    report = Report(
        [ValueDrift(column=s.name, method=s.method, threshold=s.threshold) for s in tested],
        include_tests=True,
    )
    return report.run(
        Dataset.from_pandas(_evidently_frame(current, tested), data_definition=definition),
        Dataset.from_pandas(_evidently_frame(reference, tested), data_definition=definition),
        timestamp=timestamp,
    )


def summary_markdown(model_name: str, window: str, result: DriftResult, report_path: Path | None) -> str:
    lines = [
        f"# Drift of {model_name}",
        f"Window {window}: {result.current_rows} rows against {result.reference_rows} reference rows.",
        f"**{sum(c.drifted for c in result.columns)} of {len(result.columns)} features drifted "
        f"(share {result.share:.2f}, dataset drift at {result.drift_share_threshold:.2f}: "
        f"{'yes' if result.dataset_drift else 'no'}).**",
        "",
    ]
    shown = [*result.columns, *([result.prediction] if result.prediction else [])]
    rows = [
        [
            c.column,
            c.method,
            f"{c.score:.4g}",
            "-" if c.adjusted_p_value is None else f"{c.adjusted_p_value:.4g}",
            f"{c.threshold:.4g}",
            "yes" if c.drifted else "no",
        ]
        for c in shown
    ]
    rows += [
        [
            e.feature,
            f"{e.method} (embedding)",
            f"{e.score:.4g}",
            "-" if e.p_value is None else f"{e.p_value:.4g}",
            f"{e.threshold:.4g}",
            "yes" if e.drifted else "no",
        ]
        for e in result.embeddings
    ]
    rows += [[name, "-", "-", "-", "-", f"skipped: {why}"] for name, why in result.skipped.items()]
    header = ["column", "method", "score", "adjusted p-value", "threshold", "drifted"]
    lines += [
        table(header, rows),
        "",
        "P-value tests (lower is more drift) are judged on their p-values adjusted by Benjamini-Hochberg "
        "across the model's features; distances (higher is more drift) on the score.",
    ]
    if result.embeddings:
        moved = ", ".join(f"{e.feature} {e.centroid_distance:.4g}" for e in result.embeddings)
        lines += [
            "",
            "An embedding's `model` score is a classifier's ROC AUC at telling the windows apart, drifted "
            f"past its threshold when its p-value is also below the level. Centroid distances: {moved}.",
        ]
    if report_path is not None:
        lines += ["", f"HTML report: `{report_path}`"]
    return "\n".join(lines)


def model_columns(model: Model) -> tuple[list[ColumnSpec], ColumnSpec | None]:
    """The model's features with their configured drift methods, and its prediction column (a
    number for a regression model, a class for a classifier; a ranking model's lists are judged by
    the collection's `recommended_items_drift`, not here)."""
    features = [ColumnSpec(f.name, f.type, f.drift_method, f.drift_threshold, f.dim) for f in model.features]
    if model.task == RANKING:
        return features, None
    kind = "numerical" if is_regression(model) else "categorical"
    return features, ColumnSpec(model.prediction_column, kind)


def _with_prediction_column(frame: pd.DataFrame, model: Model) -> pd.DataFrame:
    """The log calls the prediction `prediction`; reference files use the model's `prediction_column`."""
    if model.prediction_column not in frame.columns and "prediction" in frame.columns:
        return frame.rename(columns={"prediction": model.prediction_column})
    return frame


@dataclass(frozen=True)
class WindowDrift:
    model: str
    window_start: str
    window_end: str
    status: str
    share: float | None = None
    dataset_drift: bool | None = None
    drifted: tuple[str, ...] = ()
    snapshot_id: str | None = None
    html: str | None = None
    markdown: str = ""


def _previous_snapshot(store: Store, model_name: str, window: Window) -> str | None:
    with store.reading() as session:
        details = session.scalar(
            select(EvaluationResult.details).where(
                EvaluationResult.kind == DRIFT,
                EvaluationResult.subject == model_name,
                EvaluationResult.window_start == window.start,
                EvaluationResult.window_end == window.end,
                EvaluationResult.metric == "drift_share",
            )
        )
    return (details or {}).get("snapshot_id")


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def drift_windows_since(store: Store, model: str, since: datetime) -> int:
    """Drift windows of `model` evaluated since `since` (a backfill's progress)."""
    with store.reading() as session:
        counted = session.scalar(
            select(func.count()).where(
                EvaluationResult.kind == "drift",
                EvaluationResult.subject == model,
                EvaluationResult.metric == "current_rows",
                EvaluationResult.computed_at >= since,
            )
        )
    return counted or 0


def load_reference(store: Store, model: Model, sampling: Sampling) -> pd.DataFrame:
    return reference_frame(store, model, sampling)


@task(
    retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, task_run_name="drift-{model.name}-{window.end}"
)
def evaluate_drift_window(
    store: Store,
    model: Model,
    window: Window,
    reference: pd.DataFrame,
    home: Path,
    sampling: Sampling,
    flow_run_id: str | None = None,
) -> WindowDrift:
    """Drift of one window: results replace the window's earlier ones, with one snapshot and HTML report."""
    label = f"{window.start.isoformat()} to {window.end.isoformat()}"
    current = prediction_frame(
        store, model.name, window.start, window.end, sampling, at_most=model.windows.drift_sample_rows
    )
    current = current[~current["error"]] if "error" in current else current
    base = {
        "model": model.name,
        "window_start": window.start.isoformat(),
        "window_end": window.end.isoformat(),
    }
    if len(current) < model.windows.min_rows or len(reference) < model.windows.min_rows:
        save_results(
            store, DRIFT, model.name, "", window, row_counts(len(reference), len(current)), flow_run_id
        )
        needed = model.windows.min_rows
        status = f"skipped: {len(current)} current and {len(reference)} reference rows, {needed} needed"
        return WindowDrift(**base, status=status)
    features, prediction = model_columns(model)
    result = compute_drift(
        _with_prediction_column(reference, model),
        _with_prediction_column(current, model),
        features,
        model.thresholds.drift_share,
        prediction,
        timestamp=window.end,
        sample_rows=model.windows.drift_sample_rows,
        p_value_level=model.thresholds.drift_p_value,
    )
    html: Path | None = None
    snapshot_id = None
    if result.snapshot is not None:  # none when every tested feature is an embedding
        html = home / "reports" / model.name / f"drift-{window.end.strftime('%Y%m%dT%H%M%SZ')}.html"
        html.parent.mkdir(parents=True, exist_ok=True)
        result.snapshot.save_html(str(html))
        snapshot_id = add_drift_snapshot(
            home / "evidently", model, result.snapshot, replaces=_previous_snapshot(store, model.name, window)
        )
    save_results(
        store,
        DRIFT,
        model.name,
        "",
        window,
        result.measurements(),
        flow_run_id,
        details={"snapshot_id": snapshot_id, "html": str(html) if html else None},
    )
    return WindowDrift(
        **base,
        status="evaluated",
        share=result.share,
        dataset_drift=result.dataset_drift,
        drifted=(
            *(c.column for c in result.columns if c.drifted),
            *(e.feature for e in result.embeddings if e.drifted),
        ),
        snapshot_id=snapshot_id,
        html=str(html) if html else None,
        markdown=summary_markdown(model.name, label, result, html),
    )
