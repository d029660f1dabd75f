"""Data quality checks and score, and pipeline health metrics."""

import numpy as np
import pandas as pd
import pytest

from tasks.drift import ColumnSpec
from tasks.pipelines import pipeline_metrics
from tasks.quality import data_quality

COLUMNS = [ColumnSpec("amount", "numerical"), ColumnSpec("country", "categorical")]
RNG = np.random.default_rng(5)


def records(n: int, **columns: object) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "amount": RNG.uniform(10, 100, n),
            "country": RNG.choice(["DE", "FR", "NL"], n),
            "request_id": [f"r{i}" for i in range(n)],
        }
    )
    frame.loc[:1, "amount"] = [10.0, 100.0]  # every sample spans the same range
    for name, values in columns.items():
        frame[name] = values
    return frame


def checks(result) -> dict[tuple[str, str], float]:  # noqa: ANN001
    return {(c.check, c.column): c.failure_share for c in result.checks}


def test_clean_data_scores_one() -> None:
    result = data_quality(records(500), records(1000), COLUMNS)
    assert result.score == 1.0 and result.rows == 500
    assert all(share == 0.0 for share in checks(result).values())


def test_nulls_beyond_the_reference_lower_the_score_by_the_worst_column() -> None:
    reference = records(1000)
    reference.loc[900:, "amount"] = None  # 10% missing is normal for this column
    current = records(1000)
    current.loc[600:, "amount"] = None  # 40% missing now
    result = data_quality(current, reference, COLUMNS)
    assert checks(result)[("missing", "amount")] == pytest.approx(0.3)
    assert result.score == pytest.approx(0.7)


def test_out_of_range_unseen_categories_and_type_mismatches() -> None:
    current = records(100)
    current["amount"] = current["amount"].astype(object)
    current.loc[:9, "amount"] = 10_000.0  # above the reference maximum
    current.loc[10:14, "amount"] = "12.5"  # a string where a number belongs
    current.loc[:19, "country"] = "XX"
    result = data_quality(current, records(1000), COLUMNS)
    found = checks(result)
    assert found[("out_of_range", "amount")] == pytest.approx(0.10)
    assert found[("type_mismatch", "amount")] == pytest.approx(0.05)
    assert found[("unseen_category", "country")] == pytest.approx(0.20)
    assert result.score == pytest.approx(0.80)


def test_schema_changes_and_duplicate_request_ids() -> None:
    current = records(100).drop(columns=["country"])
    current["debug_flag"] = 1
    current.loc[:9, "request_id"] = "same"
    result = data_quality(current, records(1000), COLUMNS)
    found = checks(result)
    assert found[("missing_column", "country")] == 1.0 and found[("added_column", "debug_flag")] == 1.0
    assert found[("duplicate_request_id", "request_id")] == pytest.approx(0.10)
    assert result.score == 0.0  # a configured column is gone


def test_empty_window_reports_only_its_row_count() -> None:
    result = data_quality(pd.DataFrame(), records(10), COLUMNS)
    assert [m.metric for m in result.measurements("etl")] == ["rows"]


def test_pipeline_metrics() -> None:
    runs = pd.DataFrame(
        {
            "run_id": ["a", "a", "b"],
            "stage": ["extract", "load", "extract"],
            "duration_seconds": [10.0, 30.0, 20.0],
            "records": [1000, 1000, 500],
            "errors": [10, 0, 40],
        }
    )
    found = {m.metric: m.value for m in pipeline_metrics(runs)}
    assert found["runs"] == 2
    assert found["throughput_records_per_second"] == pytest.approx(2500 / 60)
    assert found["error_rate"] == pytest.approx(50 / 2500)
    assert {m.metric for m in pipeline_metrics(runs.iloc[0:0])} == {"runs"}
