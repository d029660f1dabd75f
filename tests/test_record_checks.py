"""Data quality's fast path and the outcome counters the intake keeps for the fast-window rules."""

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import LiveService
from watchkeeper.config import FileReference, WatchkeeperConfig
from watchkeeper.intake.checks import ReferenceProfiles, profile, record_failures
from watchkeeper.store import Store
from watchkeeper.store.intake import fold_tallies, tally_totals
from watchkeeper.store.schema import Tally

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC).isoformat()


def reference_frame(rows: int = 200) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "salary": [20_000.0 + 100 * i for i in range(rows)],
            "commission": [0.0] * rows,
            "age": [None if i % 5 == 0 else 20 + i % 60 for i in range(rows)],
            "elevel": [i % 5 for i in range(rows)],
            "car": [1 + i % 20 for i in range(rows)],
            "zipcode": [i % 9 for i in range(rows)],
            "hvalue": [100_000.0] * rows,
            "hyears": [10] * rows,
            "loan": [1000.0 + i for i in range(rows)],
            "prediction": [1 if i % 3 else 0 for i in range(rows)],
        }
    )


def good_features() -> dict:
    return {
        "salary": 25_000.0,
        "commission": 0.0,
        "age": 30,
        "elevel": 2,
        "car": 3,
        "zipcode": 4,
        "hvalue": 100_000.0,
        "hyears": 10,
        "loan": 1100.0,
    }


def test_each_check_names_its_column(example_config: WatchkeeperConfig) -> None:
    model = example_config.models[0]
    reference = profile(example_config, model, reference_frame())
    assert (reference.dataset, reference.pipeline) == ("credit_applications", "credit_feature_pipeline")
    assert reference.columns["age"].null_share == pytest.approx(0.2)
    assert reference.class_shares == pytest.approx({"1": 133 / 200, "0": 67 / 200})
    assert record_failures(reference, good_features()) == []
    broken = good_features() | {"salary": None, "age": "thirty", "elevel": 9, "loan": 1e9, "extra": 1}
    del broken["car"]
    assert sorted(record_failures(reference, broken)) == [
        ("missing_column", "car"),
        ("null", "salary"),
        ("out_of_range", "loan"),
        ("type_mismatch", "age"),
        ("unexpected_column", "_unexpected_"),
        ("unseen_category", "elevel"),
    ]
    assert reference.prediction_class(1.0) == "1" and reference.prediction_class("maybe") == "_other_"


def test_profiles_follow_the_reference_file(example_config: WatchkeeperConfig, tmp_path: Path) -> None:
    path = tmp_path / "reference.parquet"
    model = example_config.models[0].model_copy(update={"reference": FileReference(kind="file", path=path)})
    config = example_config.model_copy(update={"models": [model]})
    loads: list[str] = []

    def load(m):  # noqa: ANN001, ANN202
        loads.append(m.name)
        return pd.read_parquet(path) if path.exists() else pd.DataFrame()

    profiles = ReferenceProfiles(config, load, ttl=3600)
    assert profiles(model.name) is None and profiles.loaded() == []
    reference_frame().to_parquet(path)
    os.utime(path, (1, 1))
    assert profiles(model.name).columns["salary"].high == pytest.approx(39_900)
    assert profiles(model.name) is profiles(model.name) and len(loads) == 2
    reference_frame(400).to_parquet(path)
    os.utime(path, (2, 2))
    assert profiles(model.name).columns["salary"].high == pytest.approx(59_900)
    assert profiles("not_configured") is None


def metric_values(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_intake_counts_checks_and_outcomes_for_the_fast_rules(
    example_config: WatchkeeperConfig, store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "reference.parquet"
    reference_frame().to_parquet(path)
    model = example_config.models[0].model_copy(update={"reference": FileReference(kind="file", path=path)})
    config = example_config.model_copy(update={"models": [model]})
    predictions = [
        {
            "model_name": "credit_approval",
            "model_version": "v1",
            "request_id": f"r{i}",
            "timestamp": NOW,
            "features": good_features() | ({"salary": None} if i < 3 else {}),
            "prediction": 1 if i % 2 else 0,
            "score": 0.5,
            "latency_seconds": 0.01,
        }
        for i in range(10)
    ] + [
        {
            "model_name": "credit_approval",
            "model_version": "v1",
            "request_id": "failed",
            "timestamp": NOW,
            "features": good_features(),
            "error": True,
        }
    ]
    labels = [
        {"model_name": "credit_approval", "request_id": f"r{i}", "label": 1, "business_value": 100.0}
        for i in range(10)
    ]
    with LiveService(config, store) as live, httpx.Client(base_url=live.url) as client:
        assert client.post("/v1/predictions", json=predictions).status_code == 200
        assert client.post("/v1/predictions", json=predictions).json()["duplicates"] == 11
        assert client.post("/v1/feedback", json=labels + labels[:2]).status_code == 200
        fold_tallies(store)
        got = metric_values(live.url)
    dataset = (("dataset_name", "credit_applications"), ("model_name", "credit_approval"))
    dataset += (("pipeline_name", "credit_feature_pipeline"),)
    assert got[("ai_data_records_checked_total", dataset)] == 11
    assert (
        got[("ai_data_record_check_failures_total", (("check", "null"), ("column", "salary"), *dataset))] == 3
    )
    version = (("model_name", "credit_approval"), ("model_version", "v1"))
    assert got[("ai_model_prediction_errors_total", version)] == 1
    assert got[("ai_model_labelled_predictions_total", version)] == 10
    assert got[("ai_model_misclassified_predictions_total", version)] == 5
    assert got[("ai_business_value_total", (("metric_type", "loan_value_approved"), version[0]))] == 500
    by_class = "ai_model_predictions_by_class_total"
    assert got[(by_class, (version[0], version[1], ("prediction_class", "1")))] == 5
    assert got[
        ("ai_data_reference_null_share", (("column", "age"), ("dataset_name", "credit_applications")))
    ] == (pytest.approx(0.2))
    assert got[("ai_model_min_throughput_rps", version)] == 10


@pytest.mark.parametrize("chunk", [None, 7], ids=["one-chunk", "chunks-of-7"])
def test_concurrent_folds_never_count_a_row_twice(
    store: Store, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk:
        monkeypatch.setattr("watchkeeper.store.buckets.FOLD_CHUNK", chunk)
    rows = [
        {"family": "labelled", "subject": "m", "variant": "v1", "detail": "", "total": 1.0}
        for _ in range(400)
    ]
    with store.writing() as session:
        session.execute(Tally.__table__.insert(), rows)
    barrier = threading.Barrier(4)

    def fold() -> None:
        barrier.wait()
        fold_tallies(store)

    threads = [threading.Thread(target=fold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with store.reading() as session:
        assert tally_totals(session) == [("labelled", "m", "v1", "", 400.0)]
        left = session.scalar(select(func.count()).select_from(Tally))
    assert left <= 4 if chunk is None else left < 400  # a row a series and fold (or chunk)
    monkeypatch.undo()  # a fold in one chunk leaves one row a series
    fold_tallies(store)
    with store.reading() as session:
        assert tally_totals(session) == [("labelled", "m", "v1", "", 400.0)]
        assert session.scalar(select(func.count()).select_from(Tally)) == 1
