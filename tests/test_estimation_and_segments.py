"""Performance estimated before labels (CBPE) and segment metrics: the logic, then the store round trip."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from tasks.estimation import Calibration, fit_calibration
from tasks.measurements import Window
from tasks.metrics import bucket_window, measure_quality, record_results
from tasks.references import ModelReference, derive
from tasks.segments import bounded, top_values
from tests.conftest import store_feedback, store_predictions
from watchkeeper.config import OTHER_SEGMENT, Model, Segment, WatchkeeperConfig
from watchkeeper.intake.records import FeedbackRecord, PredictionRecord
from watchkeeper.service.metrics import latest_results
from watchkeeper.store import Store
from watchkeeper.store.intake import DEFAULT_RULES, IntakeRules

END = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def model(example_config: WatchkeeperConfig) -> Model:
    return example_config.models[0]


def scored(n: int, seed: int, low: float = 0.0, high: float = 1.0) -> pd.DataFrame:
    """A classifier whose true positive probability is a monotone function of its score (s**2):
    miscalibrated, so estimating from raw scores would be wrong and calibration must fix it."""
    rng = np.random.default_rng(seed)
    score = rng.uniform(low, high, n)
    label = (rng.random(n) < score**2).astype(int)
    return pd.DataFrame(
        {"score": score, "label": label, "prediction": (score >= 0.5).astype(int), "error": False}
    )


def realised_accuracy(frame: pd.DataFrame) -> float:
    return float((frame["prediction"] == frame["label"]).mean())


def stored_scored(
    store: Store, model: Model, frame: pd.DataFrame, rules: IntakeRules = DEFAULT_RULES
) -> Window:
    """`frame`'s predictions through the intake, then the labels it has; the collection's window."""
    save_predictions_with(
        store,
        [
            PredictionRecord(
                model_name=model.name,
                model_version="v1",
                request_id=f"r{i}",
                timestamp=(END - timedelta(minutes=1)).isoformat(),
                features={"salary": 1.0, **({"elevel": row.elevel} if "elevel" in frame else {})},
                error=bool(row.error),
                prediction=None if row.error else int(row.prediction),
                score=float(row.score),
            )
            for i, row in enumerate(frame.itertuples())
        ],
        rules,
    )
    store_feedback(
        store,
        [
            FeedbackRecord(model_name=model.name, request_id=f"r{i}", label=int(row.label))
            for i, row in enumerate(frame.itertuples())
            if not pd.isna(row.label)
        ],
        rules,
    )
    return bucket_window(END, timedelta(minutes=30), 60)


def save_predictions_with(store: Store, records: list[PredictionRecord], rules: IntakeRules) -> None:
    for start in range(0, len(records), 1000):
        store_predictions(store, records[start : start + 1000], rules)


def estimated(store: Store, model: Model, window: Window, calibration: Calibration) -> dict[str, float]:
    found = measure_quality(store, model, window, ModelReference(calibration))["model_quality"]["v1"]
    return {m.metric: m.value for m in found if m.metric.startswith("estimated")}


def test_the_estimate_follows_a_covariate_shift_the_reference_never_had(store: Store, model: Model) -> None:
    reference = scored(5000, seed=1)
    calibration = fit_calibration(reference, "score", "label", 1)
    assert calibration is not None
    # The scores move to where the model is unsure (0.4-0.8): accuracy drops from ~0.75 to ~0.55.
    shifted = scored(5000, seed=2, low=0.4, high=0.8)
    estimate = estimated(store, model, stored_scored(store, model, shifted.assign(label=None)), calibration)
    assert realised_accuracy(reference) - realised_accuracy(shifted) > 0.15
    assert estimate["estimated_accuracy"] == pytest.approx(realised_accuracy(shifted), abs=0.03)
    assert estimate["estimated_accuracy_standard_error"] < 0.01
    positives = shifted[shifted["prediction"] == 1]
    assert estimate["estimated_precision"] == pytest.approx(float(positives["label"].mean()), abs=0.03)
    assert estimate["estimated_rows"] == 5000


def test_only_predictions_still_without_a_label_are_estimated(store: Store, model: Model) -> None:
    """A label arriving takes its prediction out of the estimate; a failed prediction is never in it."""
    calibration = fit_calibration(scored(2000, seed=1), "score", "label", 1)
    assert calibration is not None
    frame = scored(400, seed=3)
    frame["label"] = [None] * 150 + list(frame["label"][150:])
    frame.loc[0, "error"] = True
    window = stored_scored(store, model, frame)
    assert estimated(store, model, window, calibration)["estimated_rows"] == 149
    few = model.model_copy(update={"windows": model.windows.model_copy(update={"min_rows": 200})})
    assert estimated(store, few, window, calibration) == {"estimated_rows": 149}


@pytest.mark.parametrize(
    "columns",
    [
        {"score": np.linspace(0, 1, 500)},  # no labels
        {"score": np.linspace(0, 1, 500), "label": 1},  # one class
        {"score": np.linspace(0, 1, 50), "label": [0, 1] * 25},  # too few rows
    ],
    ids=["no-labels", "one-class", "too-few"],
)
def test_a_reference_that_cannot_calibrate_gives_no_estimate(columns: dict) -> None:
    assert fit_calibration(pd.DataFrame(columns), "score", "label", 1) is None


def test_segment_labels_are_bounded_whatever_the_column_holds() -> None:
    values = pd.Series([str(i % 30) for i in range(3000)] + [None] * 10 + ["x" * 500] * 200 + [[1, 2]])
    kept = top_values(values, 5)
    names = bounded(values, kept)
    assert len(kept) == 5 and "x" * 64 in kept  # the long value is the most frequent: kept, cut
    assert set(names) == {*kept, OTHER_SEGMENT, "_missing_"}
    assert names.str.len().max() <= 64


def test_segment_metrics_rank_by_reference_and_publish_accuracy_only_with_enough_labels(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    model = example_config.models[0].model_copy(update={"segments": [Segment(column="elevel", max_values=2)]})
    frame = pd.DataFrame(
        {
            "elevel": [1] * 100 + [2] * 60 + [3] * 20,
            "prediction": [1] * 100 + [0] * 60 + [1] * 20,
            "label": [1] * 50 + [0] * 50 + [None] * 40 + [0] * 20 + [1] * 20,
            "score": 0.5,
            "error": False,
        }
    )
    window = stored_scored(store, model, frame, IntakeRules(model_for={model.name: model}.get))
    reference = ModelReference(None, {"elevel": ["1", "2"]}, {("elevel", "1"): 0.2})
    found = measure_quality(store, model, window, reference)["model_segments"]["v1"]
    by = {(m.labels.get("segment"), m.metric): m.value for m in found}
    assert by[("1", "segment_request_count")] == 100
    assert by[("1", "segment_positive_rate")] == 1.0
    assert by[("1", "segment_reference_positive_rate")] == 0.2
    assert by[("1", "segment_accuracy")] == 0.5
    # elevel=2: 20 labels of 60 (coverage 1/3, under the model's 0.5): no accuracy.
    assert ("2", "segment_accuracy") not in by
    assert by[(OTHER_SEGMENT, "segment_request_count")] == 20
    assert (OTHER_SEGMENT, "segment_accuracy") not in by  # 20 labels: too few to judge
    assert {m.labels["segment"] for m in found if "segment" in m.labels} == {"1", "2", OTHER_SEGMENT}
    assert by[(None, "positive_rate")] == pytest.approx(120 / 180)


def test_segments_and_the_estimate_round_trip_through_the_store(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """Segment values are read from the predictions' feature JSON on each back end."""
    model = example_config.models[0].model_copy(update={"segments": [Segment(column="elevel", max_values=2)]})
    rng = np.random.default_rng(5)
    stamp = (END - timedelta(minutes=1)).isoformat()
    scores = rng.uniform(0, 1, 600)
    rules = IntakeRules(model_for={model.name: model}.get)
    store_predictions(
        store,
        [
            PredictionRecord(
                model_name=model.name,
                model_version="v1",
                request_id=f"r{i}",
                timestamp=stamp,
                features={"salary": 1.0, "elevel": i % 4},
                prediction=int(scores[i] >= 0.5),
                score=float(scores[i]),
                latency_seconds=0.01,
            )
            for i in range(600)
        ],
        rules,
    )
    store_feedback(
        store,
        [
            FeedbackRecord(model_name=model.name, request_id=f"r{i}", label=int(scores[i] >= 0.5))
            for i in range(400)
        ],
        rules,
    )
    reference = scored(2000, seed=9).assign(elevel=[0, 1, 1, 2] * 500)
    derived = derive(model, reference)
    assert derived.segment_values == {"elevel": ["1", "0"]}
    window = bucket_window(END, timedelta(minutes=5), 60)
    measured = measure_quality(store, model, window, derived)
    record_results(store, model, {window: measured}, None)
    with store.reading() as session:
        exported = {(r.kind, r.metric, r.labels.get("segment", "")): r.value for r in latest_results(session)}
    assert exported[("model_quality", "estimated_rows", "")] == 200
    assert 0 < exported[("model_quality", "estimated_accuracy", "")] <= 1
    assert exported[("model_segments", "segment_request_count", "0")] == 150
    assert exported[("model_segments", "segment_request_count", "1")] == 150
    assert exported[("model_segments", "segment_request_count", OTHER_SEGMENT)] == 300
    assert exported[("model_segments", "segment_accuracy", "1")] == 1.0
