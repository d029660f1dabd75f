"""Data quality of a dataset's recent records against its reference.

Checks, each a share of rows in [0, 1]:
- `missing`: values that are null or absent, beyond the share already missing in the reference;
- `out_of_range`: numerical values outside the reference's [min, max];
- `unseen_category`: categorical values the reference never had;
- `type_mismatch`: numerical columns holding values that are not numbers, text columns values
  that are not strings, embedding columns values that are not vectors;
- `duplicate_request_id`: rows whose request id appears more than once;
- `missing_column` / `added_column`: configured columns absent from every row, or columns that
  are not configured, as a share of the configured columns.

The score is the worst column's share of good values, times the schema's and the duplicates':

    column_good(c) = 1 - missing(c) - (1 - share_null(c)) * invalid(c)
    score = min_c column_good(c) * (1 - schema_change) * (1 - duplicate_request_id)

where invalid(c) = out_of_range + unseen_category + type_mismatch among c's non-null values, and
schema_change = min(1, (missing columns + added columns) / configured columns). One broken column
is enough to lower the score: averaging it with healthy columns would hide it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.drift import ColumnSpec
from tasks.logs import LOG_FIELDS, prediction_frame
from tasks.metrics import Measurement, Window, save_results
from watchkeeper.config import Dataset, Model
from watchkeeper.intake.checks import FREE_FORM, is_number
from watchkeeper.store import Store
from watchkeeper.store.samples import Sampling


@dataclass(frozen=True)
class CheckResult:
    check: str
    column: str
    failure_share: float


@dataclass(frozen=True)
class QualityResult:
    score: float
    rows: int
    checks: list[CheckResult]

    def measurements(self, pipeline: str) -> list[Measurement]:
        if self.rows == 0:
            return [Measurement("rows", 0.0, {"pipeline_name": pipeline})]
        found = [
            Measurement("quality_score", self.score, {"pipeline_name": pipeline}),
            Measurement("rows", float(self.rows), {"pipeline_name": pipeline}),
        ]
        found += [
            Measurement(
                "check_failure_share",
                c.failure_share,
                {"pipeline_name": pipeline, "check": c.check, "column": c.column},
            )
            for c in self.checks
        ]
        return found


def _free_form_checker(kind: str) -> Callable[[object], bool]:
    """Whether a text value is a string, an embedding's a vector (its length was checked at intake)."""
    if kind == "text":
        return lambda value: isinstance(value, str)
    return lambda value: isinstance(value, list | tuple | np.ndarray)


def _column_checks(
    spec: ColumnSpec, current: pd.Series, reference: pd.Series
) -> tuple[list[CheckResult], float]:
    """The column's check results and its share of good values."""
    null = current.isna()
    missing = max(0.0, float(null.mean()) - float(reference.isna().mean()))
    present = current[~null]
    known = reference.dropna()
    checks = [CheckResult("missing", spec.name, missing)]
    invalid = 0.0
    if len(present):
        if spec.type == "numerical":
            numeric = present.map(is_number)
            values = pd.to_numeric(present[numeric])
            mismatch = 1.0 - float(numeric.mean())
            low, high = (known.min(), known.max()) if len(known) else (float("-inf"), float("inf"))
            out_of_range = float(((values < low) | (values > high)).sum()) / len(present)
            checks += [
                CheckResult("type_mismatch", spec.name, mismatch),
                CheckResult("out_of_range", spec.name, out_of_range),
            ]
            invalid = mismatch + out_of_range
        elif spec.type in FREE_FORM:
            mismatch = 1.0 - float(present.map(_free_form_checker(spec.type)).mean())
            checks.append(CheckResult("type_mismatch", spec.name, mismatch))
            invalid = mismatch
        else:
            unseen = float((~present.astype(str).isin(set(known.astype(str)))).mean())
            checks.append(CheckResult("unseen_category", spec.name, unseen))
            invalid = unseen
    good = 1.0 - missing - (1.0 - float(null.mean())) * invalid
    return checks, max(0.0, min(1.0, good))


def data_quality(current: pd.DataFrame, reference: pd.DataFrame, columns: list[ColumnSpec]) -> QualityResult:
    if current.empty:
        return QualityResult(score=1.0, rows=0, checks=[])
    configured = {c.name for c in columns}
    observed = {c for c in current.columns if c not in LOG_FIELDS and current[c].notna().any()}
    missing_columns = sorted(configured - observed)
    added_columns = sorted(observed - configured)
    checks = [CheckResult("missing_column", name, 1.0) for name in missing_columns]
    checks += [CheckResult("added_column", name, 1.0) for name in added_columns]
    schema_change = min(1.0, (len(missing_columns) + len(added_columns)) / max(1, len(configured)))
    duplicates = (
        float(current["request_id"].duplicated(keep=False).mean()) if "request_id" in current else 0.0
    )
    checks.append(CheckResult("duplicate_request_id", "request_id", duplicates))
    worst = 1.0
    for spec in columns:
        if spec.name in missing_columns:
            worst = 0.0
            continue
        reference_column = reference[spec.name] if spec.name in reference else pd.Series(dtype=object)
        column_checks, good = _column_checks(spec, current[spec.name], reference_column)
        checks += column_checks
        worst = min(worst, good)
    score = worst * (1.0 - schema_change) * (1.0 - duplicates)
    return QualityResult(score=score, rows=len(current), checks=checks)


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, task_run_name="quality-{dataset.name}")
def evaluate_dataset(
    store: Store,
    dataset: Dataset,
    model: Model,
    window: Window,
    reference: pd.DataFrame,
    sampling: Sampling,
    flow_run_id: str | None,
) -> QualityResult:
    current = prediction_frame(
        store, model.name, window.start, window.end, sampling, at_most=model.windows.quality_sample_rows
    )
    columns = [ColumnSpec(f.name, f.type) for f in model.features]
    result = data_quality(current, reference, columns)
    pipeline = dataset.pipeline or ""
    save_results(store, "data_quality", dataset.name, "", window, result.measurements(pipeline), flow_run_id)
    return result
