"""Multiclass and regression models, through the real path: JSON posted to the service, the
intake's aggregates, the collection's windows, and `/metrics`. Every score is checked against
scikit-learn on the same records."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from evidently import DataDefinition, Dataset, Report
from evidently.core.datasets import Recsys
from evidently.metrics import MRR, NDCG, HitRate, PrecisionTopK, RecallTopK
from prometheus_client.parser import text_string_to_metric_families
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    ndcg_score,
    precision_recall_fscore_support,
    r2_score,
)

from tasks.metrics import bucket_window, collect_model
from tasks.references import ModelReference, derive, model_reference
from tasks.report_render import html_report, markdown
from tasks.reporting import Period, gather_report
from tests.conftest import LiveService
from watchkeeper.config import ConfigError, WatchkeeperConfig, load_config
from watchkeeper.intake.aggregates import bucket_start
from watchkeeper.local.demo_kinds import KindInjections, RegressionTraffic
from watchkeeper.store import Store
from watchkeeper.store.buckets import fold_model_tallies
from watchkeeper.times import utcnow

CLASSES = ["cat", "dog", "bird"]
REGIONS = ["north", "south", "east"]
FEATURES = [{"name": "size", "type": "numerical"}, {"name": "region", "type": "categorical"}]


def fleet() -> WatchkeeperConfig:
    segments = [{"column": "region", "max_values": 5}]
    return WatchkeeperConfig.model_validate(
        {
            "models": [
                {
                    "name": "species",
                    "version": "v1",
                    "task": "multiclass",
                    "classes": CLASSES,
                    "features": FEATURES,
                    "segments": segments,
                    "windows": {"quality": "30m"},
                },
                {
                    "name": "demand",
                    "version": "v1",
                    "task": "regression",
                    "features": FEATURES,
                    "segments": segments,
                    "windows": {"quality": "30m"},
                    "thresholds": {"mae_warning": 5.0, "mean_error_limit": 1.0},
                },
            ]
        }
    )


def prediction(model: str, i: int, value: Any, region: str) -> dict[str, Any]:
    return {
        "model_name": model,
        "model_version": "v1",
        "request_id": f"{model}-{i}",
        "timestamp": (utcnow() - timedelta(minutes=2)).isoformat(),
        "features": {"size": float(i % 17), "region": region},
        "prediction": value,
        "latency_seconds": 0.01,
    }


def label(model: str, i: int, value: Any, business_value: float | None = None) -> dict[str, Any]:
    found = {"model_name": model, "request_id": f"{model}-{i}", "label": value}
    if business_value is not None:
        found["business_value"] = business_value
    return found


def post(url: str, path: str, records: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=records, timeout=30)


def exported(url: str, model: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> labels other than model_name and model_version -> value, for one model."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model_name") == model:
                rest = tuple(
                    sorted(
                        (k, v) for k, v in sample.labels.items() if k not in ("model_name", "model_version")
                    )
                )
                found.setdefault(sample.name, {})[rest] = sample.value
    return found


def collect(
    store: Store, config: WatchkeeperConfig, name: str, reference: ModelReference | None = None
) -> None:
    model = config.model(name)
    assert model is not None
    end = utcnow()
    fold_model_tallies(store)
    collect_model(
        store,
        model,
        bucket_window(end, model.windows.metrics, 60),
        bucket_window(end, model.windows.quality, 60),
        reference,
        None,
    )


def collect_with_reference(store: Store, config: WatchkeeperConfig, name: str) -> None:
    """As the collection flow does: the model's reference derived through the flow's cache."""
    model = config.model(name)
    assert model is not None
    collect(store, config, name, model_reference(store, config, model))


def reported(store: Store, config: WatchkeeperConfig, name: str, raw_rows: bool = True) -> dict[str, Any]:
    """The model's report over the last hour, from its raw rows; checked against the same report
    from the per-bucket aggregates (what a store keeping 1 % of raw rows reads), and rendered. A
    ranking model's report reads the aggregates whatever the store keeps (`raw_rows=False`)."""
    model = config.model(name)
    assert model is not None
    end = bucket_start(utcnow(), 60) + timedelta(minutes=1)
    period = Period(end - timedelta(hours=1), end)
    raw = gather_report(store, config, model, period, None, {})
    sampled = config.model_copy(update={"intake": config.intake.model_copy(update={"raw_predictions": 0.01})})
    aggregated = gather_report(store, sampled, model, period, None, {})
    assert raw["source"].startswith("raw rows" if raw_rows else "aggregates")
    assert aggregated["source"].startswith("aggregates")
    for key in ("quality", "business", "segments"):
        assert aggregated[key] == raw[key], key
    assert "<h2>Quality</h2>" in html_report(raw)
    return {**raw, "markdown": markdown(raw)}


def one(values: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    return values[tuple(sorted(labels.items()))]


def test_a_multiclass_models_scores_are_scikit_learns(store: Store) -> None:
    config = fleet()
    rng = np.random.default_rng(7)
    n = 600
    actual = rng.choice([*CLASSES, "fish"], size=n, p=[0.45, 0.3, 0.2, 0.05])
    flipped = rng.random(n) < 0.3
    predicted = np.where(flipped, rng.choice([*CLASSES, "fish"], size=n), actual)
    regions = rng.choice(REGIONS, size=n)
    labelled = rng.random(n) < 0.8
    with LiveService(config, store) as service:
        records = [prediction("species", i, str(predicted[i]), str(regions[i])) for i in range(n)]
        assert post(service.url, "/v1/predictions", records).status_code == 200
        feedback = [label("species", i, str(actual[i]), 2.0) for i in range(n) if labelled[i]]
        assert post(service.url, "/v1/feedback", feedback).status_code == 200
        collect(store, config, "species")
        got = exported(service.url, "species")

    def bounded(values: np.ndarray) -> np.ndarray:
        return np.where(np.isin(values, CLASSES), values, "_other_")

    y_true, y_pred = bounded(actual[labelled]), bounded(predicted[labelled])
    classes = sorted(set(y_true) | set(y_pred))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    assert one(got["ai_model_accuracy_score"]) == pytest.approx(accuracy_score(y_true, y_pred))
    assert one(got["ai_model_f1_macro_score"]) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert one(got["ai_model_f1_weighted_score"]) == pytest.approx(
        f1_score(y_true, y_pred, average="weighted")
    )
    for i, name in enumerate(classes):
        assert one(got["ai_model_class_precision_score"], **{"class": name}) == pytest.approx(precision[i])
        assert one(got["ai_model_class_recall_score"], **{"class": name}) == pytest.approx(recall[i])
        assert one(got["ai_model_class_f1_score"], **{"class": name}) == pytest.approx(f1[i])
        assert one(got["ai_model_class_labelled_predictions"], **{"class": name}) == support[i]
    cells = got["ai_model_confusion_matrix_predictions"]
    assert sum(cells.values()) == labelled.sum()
    assert one(cells, predicted_class="_other_", actual_class="cat") == np.sum(
        (y_pred == "_other_") & (y_true == "cat")
    )
    assert one(got["ai_model_label_coverage_ratio"]) == pytest.approx(labelled.mean())
    assert one(got["ai_business_impact_score"], metric_type="value_caught") == 2.0 * np.sum(y_true == y_pred)
    # The classes a sender can create are bounded: the configured ones and _other_.
    assert {dict(k)["prediction_class"] for k in got["ai_model_predictions_by_class_total"]} == {
        *CLASSES,
        "_other_",
    }
    for region in REGIONS:
        mask = regions[labelled] == region
        segment = {"segment_column": "region", "segment": region}
        expected = accuracy_score(y_true[mask], y_pred[mask])
        assert one(got["ai_model_segment_accuracy_score"], **segment) == pytest.approx(expected)
    assert "ai_model_segment_positive_rate" not in got  # a binary model's notion
    assert "ai_model_precision_score" not in got
    report = reported(store, config, "species")
    scores = report["quality"]["scores"]
    assert scores["f1_macro"]["value"] == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-4)
    assert scores["accuracy"]["low"] < scores["accuracy"]["value"] < scores["accuracy"]["high"]
    assert [c["class"] for c in report["quality"]["classes"]] == classes
    assert "| macro F1 |" in report["markdown"] and "| bird |" in report["markdown"]
    assert report["business"]["value"] == 2.0 * np.sum(y_true == y_pred)


def test_a_regression_models_errors_are_scikit_learns(store: Store) -> None:
    config = fleet()
    rng = np.random.default_rng(11)
    n = 500
    y = rng.normal(50, 10, size=n)
    y[:7] = 0.0  # left out of the MAPE, and counted as such
    y_hat = y + 2.0 + rng.normal(0, 3, size=n)
    regions = rng.choice(REGIONS, size=n)
    labelled = np.arange(n) % 5 != 4
    with LiveService(config, store) as service:
        records = [prediction("demand", i, float(y_hat[i]), str(regions[i])) for i in range(n)]
        assert post(service.url, "/v1/predictions", records).status_code == 200
        feedback = [label("demand", i, float(y[i]), 1.5) for i in range(n) if labelled[i]]
        assert post(service.url, "/v1/feedback", feedback).status_code == 200
        collect(store, config, "demand")
        got = exported(service.url, "demand")
    t, p = y[labelled], y_hat[labelled]
    nonzero = t != 0
    assert one(got["ai_model_mae"]) == pytest.approx(mean_absolute_error(t, p))
    assert one(got["ai_model_rmse"]) == pytest.approx(np.sqrt(mean_squared_error(t, p)))
    assert one(got["ai_model_mean_error"]) == pytest.approx(np.mean(p - t))
    assert one(got["ai_model_r2_score"]) == pytest.approx(r2_score(t, p))
    assert one(got["ai_model_mape_ratio"]) == pytest.approx(
        np.mean(np.abs(p - t)[nonzero] / np.abs(t[nonzero]))
    )
    assert one(got["ai_model_mape_excluded_labels"]) == np.sum(~nonzero)
    errors = np.abs(p - t)
    for q in (0.5, 0.9, 0.99):
        assert one(got["ai_model_absolute_error"], quantile=f"{q:g}") == pytest.approx(
            np.quantile(errors, q, method="lower"), rel=0.011
        )
    assert one(got["ai_business_impact_score"], metric_type="value_caught") == pytest.approx(
        1.5 * labelled.sum()
    )
    for region in REGIONS:
        mask = regions[labelled] == region
        segment = {"segment_column": "region", "segment": region}
        assert one(got["ai_model_segment_mae"], **segment) == pytest.approx(
            mean_absolute_error(t[mask], p[mask])
        )
    # A number is never "misclassified", nor a class: the accuracy-collapse rule stays quiet.
    assert sum(got.get("ai_model_misclassified_predictions_total", {}).values()) == 0
    assert one(got["ai_model_labelled_predictions_total"]) == labelled.sum()
    assert "ai_model_predictions_by_class_total" not in got and "ai_model_accuracy_score" not in got
    limits = {dict(k)["limit"]: v for k, v in got["ai_model_quality_limits"].items()}
    assert limits == {"mae_warning": 5.0, "mean_error_limit": 1.0}
    report = reported(store, config, "demand")
    assert report["quality"]["scores"]["mae"]["value"] == pytest.approx(mean_absolute_error(t, p), abs=1e-6)
    assert report["quality"]["mape_excluded_labels"] == np.sum(~nonzero)
    assert "| MAE |" in report["markdown"] and "Absolute error: p50" in report["markdown"]
    assert {s["segment"] for s in report["segments"]} >= set(REGIONS)
    assert all(s["mae"] is not None for s in report["segments"] if s["segment"] in REGIONS)


@pytest.mark.parametrize(
    ("path", "record", "field"),
    [
        ("/v1/predictions", prediction("demand", 1, "high", "north"), "prediction"),
        ("/v1/predictions", prediction("demand", 1, True, "north"), "prediction"),
        ("/v1/feedback", label("demand", 1, "12 units"), "label"),
    ],
)
def test_a_regression_record_that_is_not_a_number_is_refused_and_nothing_of_its_batch_is_stored(
    store: Store, path: str, record: dict[str, Any], field: str
) -> None:
    config = fleet()
    good = prediction("demand", 0, 3.5, "north") if path == "/v1/predictions" else label("demand", 0, 3.0)
    with LiveService(config, store) as service:
        answer = post(service.url, path, [good, record])
        assert answer.status_code == 422
        detail = answer.json()
        assert (detail["index"], detail["field"]) == (1, field)
        assert "expected a number" in detail["error"] and "regression" in detail["error"]
        totals = exported(service.url, "demand")
    assert not totals.get("watchkeeper_predictions_total") and not totals.get("watchkeeper_feedback_total")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"task": "multiclass"}, "expected at least two under 'classes'"),
        ({"task": "multiclass", "classes": ["a", "a"]}, "class 'a' is listed twice"),
        ({"classes": ["a", "b"]}, "'classes' is for multiclass models"),
        ({"task": "clustering"}, "'binary', 'multiclass', 'regression' or 'ranking'"),
        ({"ranking": {"k": [5]}}, "'ranking' is for ranking models"),
        (
            {"task": "ranking", "ranking": {"k": [5, 200]}},
            "expected each k between 1 and max_list_length (100)",
        ),
    ],
)
def test_a_models_task_and_classes_are_checked_when_the_config_loads(
    tmp_path: Path, model: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "watchkeeper.yaml"
    body = {"name": "m", "version": "v1", "features": FEATURES, **model}
    path.write_text(yaml.safe_dump({"models": [body]}))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert expected in str(refused.value)


def test_the_openapi_document_pins_each_tasks_record_shapes(store: Store) -> None:
    with LiveService(fleet(), store) as service:
        schemas = httpx.get(f"{service.url}/openapi.json").json()["components"]["schemas"]
    prediction_field = schemas["PredictionRecord"]["properties"]["prediction"]
    label_field = schemas["FeedbackRecord"]["properties"]["label"]
    for field in (prediction_field, label_field):
        assert "multiclass" in field["description"] and "regression" in field["description"]
        assert {type(example) for example in field["examples"]} == {int, str, float, dict}
        assert "ranking" in field["description"]


CATALOGUE = [f"sku-{i}" for i in range(50)]
POPULARITY = 1 / np.arange(1, 51) ** 1.1


def ranked_lists(rng: np.random.Generator, n: int) -> list[list[str]]:
    chosen = [rng.choice(50, size=8, replace=False, p=POPULARITY / POPULARITY.sum()) for _ in range(n)]
    return [[CATALOGUE[i] for i in row] for row in chosen]


def ranking_fleet(tmp_path: Path) -> WatchkeeperConfig:
    rng = np.random.default_rng(5)
    reference = tmp_path / "reference.csv"
    lists = ranked_lists(rng, 400)
    reference.write_text(
        "size,region,prediction\n"
        + "".join(
            f'{i % 17},{REGIONS[i % 3]},"{json.dumps(row).replace(chr(34), chr(34) * 2)}"\n'
            for i, row in enumerate(lists)
        )
    )
    return WatchkeeperConfig.model_validate(
        {
            "models": [
                {
                    "name": "shop",
                    "version": "v1",
                    "task": "ranking",
                    "ranking": {"k": [3, 5], "max_list_length": 8, "catalogue_size": 50},
                    "features": FEATURES,
                    "segments": [{"column": "region", "max_values": 5}],
                    "reference": {"kind": "file", "path": str(reference)},
                    "windows": {"quality": "30m"},
                    "thresholds": {"ndcg_warning": 0.3},
                }
            ]
        }
    )


def test_a_ranking_models_scores_are_scikit_learns_and_its_recommendations_are_measured(
    store: Store, tmp_path: Path
) -> None:
    config = ranking_fleet(tmp_path)
    rng = np.random.default_rng(9)
    n = 300
    lists = ranked_lists(rng, n)
    regions = rng.choice(REGIONS, size=n)
    feedback: dict[int, dict[str, int]] = {}
    for i in range(n):
        if i % 4 == 3:
            continue  # no feedback yet
        clicked = {item: int(rng.integers(1, 4)) for item in lists[i] if rng.random() < 0.25}
        if rng.random() < 0.3:  # an item found elsewhere: relevant, never recommended
            clicked[str(rng.choice(CATALOGUE))] = 1
        feedback[i] = clicked
    with LiveService(config, store) as service:
        records = [
            prediction(
                "shop", i, {"items": lists[i], "scores": list(np.linspace(1, 0.1, 8))}, str(regions[i])
            )
            for i in range(n)
        ]
        assert post(service.url, "/v1/predictions", records).status_code == 200
        sent = [
            label("shop", i, {"items": list(c), "relevance": list(c.values())}, 1.0)
            for i, c in feedback.items()
        ]
        assert post(service.url, "/v1/feedback", sent).status_code == 200
        collect_with_reference(store, config, "shop")
        got = exported(service.url, "shop")
    for k in (3, 5):
        ndcg, precision, recall, hits = [], [], [], []
        for i, clicked in feedback.items():
            relevant = {item for item, value in clicked.items() if value > 0}
            items = sorted(set(lists[i]) | set(clicked))
            truth = [[clicked.get(item, 0) for item in items]]
            order = [[(8 - lists[i].index(item)) if item in lists[i] else 0 for item in items]]
            ndcg.append(ndcg_score(truth, order, k=k) if len(items) > 1 else 0.0)
            top = set(lists[i][:k])
            precision.append(len(top & relevant) / k)
            hits.append(bool(top & relevant))
            if relevant:
                recall.append(len(top & relevant) / len(relevant))
        at_k = {"k": str(k)}
        assert one(got["ai_model_ndcg_at_k_score"], **at_k) == pytest.approx(np.mean(ndcg))
        assert one(got["ai_model_precision_at_k_score"], **at_k) == pytest.approx(np.mean(precision))
        assert one(got["ai_model_recall_at_k_score"], **at_k) == pytest.approx(np.mean(recall))
        assert one(got["ai_model_hit_rate_at_k_score"], **at_k) == pytest.approx(np.mean(hits))
    ranks = [
        next((1 / r for r, item in enumerate(lists[i], start=1) if clicked.get(item, 0) > 0), 0.0)
        for i, clicked in feedback.items()
    ]
    assert one(got["ai_model_mrr_score"]) == pytest.approx(np.mean(ranks))
    shown = Counter(item for row in lists for item in row[:5])
    assert one(got["ai_model_catalogue_coverage_ratio"]) == pytest.approx(len(shown) / 50)
    reference = Counter(item for row in ranked_lists(np.random.default_rng(5), 400) for item in row[:5])
    top = max(reference, key=lambda item: (reference[item], item))
    assert one(got["ai_model_popularity_bias_ratio"]) == pytest.approx(shown[top] / sum(shown.values()))
    items = sorted(set(shown) | set(reference))
    mine = np.array([shown[i] for i in items]) / sum(shown.values())
    theirs = np.array([reference[i] for i in items]) / sum(reference.values())
    assert one(got["ai_model_recommended_items_drift_score"]) == pytest.approx(
        jensenshannon(mine, theirs, base=2)
    )
    # No item id is a label value anywhere in /metrics.
    assert not any("sku-" in str(labels) for family in got.values() for labels in family)
    assert {dict(k)["segment"] for k in got["ai_model_segment_ndcg_score"]} == set(REGIONS)
    assert {dict(k)["limit"]: v for k, v in got["ai_model_quality_limits"].items()} == {"ndcg_warning": 0.3}
    report = reported(store, config, "shop", raw_rows=False)
    assert report["quality"]["headline"] == "ndcg_at_3"
    assert "| NDCG@3 |" in report["markdown"] and "catalogue coverage" in report["markdown"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [f"sku-{i}" for i in range(9)]}, "prediction.items"),
        ({"items": ["a", "b"], "scores": [0.5]}, "prediction.scores"),
        ({"items": ["a", "b", True]}, "prediction.items[2]"),
        ({"items": ["a"], "why": "x"}, "prediction.why"),
        (["a", "b"], "prediction"),
    ],
)
def test_a_ranked_list_out_of_shape_is_refused_naming_its_field(
    store: Store, tmp_path: Path, body: Any, field: str
) -> None:
    config = ranking_fleet(tmp_path)
    good = prediction("shop", 0, {"items": ["a", "b"]}, "north")
    with LiveService(config, store) as service:
        answer = post(service.url, "/v1/predictions", [good, prediction("shop", 1, body, "north")])
        refused_label = post(
            service.url, "/v1/feedback", [label("shop", 0, {"items": ["a"], "relevance": [-1]})]
        )
        assert post(service.url, "/v1/feedback", [label("shop", 0, {"items": []})]).status_code == 200
    assert answer.status_code == 422 and (answer.json()["index"], answer.json()["field"]) == (1, field)
    assert refused_label.status_code == 422 and refused_label.json()["field"] == "label.relevance[0]"


def test_a_regression_models_mae_is_estimated_before_its_labels_and_each_label_takes_its_share_out(
    store: Store, tmp_path: Path
) -> None:
    """DLE through the service: the intake fits the loss model on the reference file, gives each
    prediction its expected error, and the collection publishes the estimate of those still
    without a label; on the demo's stream (no shift) it is close to the realised MAE."""
    demo = RegressionTraffic(model_name="demand", train_size=2000, seed=3, reference_size=2000)
    reference = tmp_path / "reference.parquet"
    demo.reference.to_parquet(reference)
    config = WatchkeeperConfig.model_validate(
        {
            "models": [
                {
                    "name": "demand",
                    "version": "v1",
                    "task": "regression",
                    "features": [{"name": f"x{i}", "type": "numerical"} for i in range(10)],
                    "reference": {"kind": "file", "path": str(reference)},
                    "windows": {"quality": "30m", "min_rows": 100},
                }
            ]
        }
    )
    events = demo.next_batch(600)
    now = utcnow() - timedelta(minutes=1)
    with LiveService(config, store) as service:
        records = [demo.prediction_record(e, now) | {"timestamp": now.isoformat()} for e in events]
        assert post(service.url, "/v1/predictions", records).status_code == 200
        collect_with_reference(store, config, "demand")
        before = exported(service.url, "demand")
        labels = [
            {"model_name": "demand", "request_id": e.request_id, "label": e.label} for e in events[:450]
        ]
        assert post(service.url, "/v1/feedback", labels).status_code == 200
        collect_with_reference(store, config, "demand")
        after = exported(service.url, "demand")
    realised = float(np.mean([abs(e.prediction - e.label) for e in events]))
    assert one(before["ai_model_estimated_predictions"]) == 600
    assert one(before["ai_model_estimated_mae"]) == pytest.approx(realised, rel=0.2)
    assert one(after["ai_model_estimated_predictions"]) == 150  # the labelled 450 left the estimate
    assert "ai_model_estimated_mae" in after
    # The report's quality chart: the labelled MAE and the DLE estimate of the rest, from the
    # aggregates (a store keeping 1 % of raw rows).
    sampled = config.model_copy(update={"intake": config.intake.model_copy(update={"raw_predictions": 0.01})})
    end = bucket_start(utcnow(), 60) + timedelta(minutes=1)
    model = config.model("demand")
    assert model is not None
    series = gather_report(store, sampled, model, Period(end - timedelta(hours=1), end), None, {})["series"]
    labelled = [abs(e.prediction - e.label) for e in events[:450]]
    assert [v for v in series["quality"] if v is not None] == [pytest.approx(np.mean(labelled))]
    assert [v for v in series["estimated_quality"] if v is not None] == [
        pytest.approx(one(after["ai_model_estimated_mae"]))
    ]


def test_a_multiclass_models_quality_is_estimated_from_its_scores_until_each_label_takes_its_share_out(
    store: Store, tmp_path: Path
) -> None:
    """CBPE one class against the rest: calibrated on a reference whose scores are honest
    probabilities, the estimate over the unlabelled predictions is what scikit-learn's isotonic
    calibration gives them, and near their realised accuracy once their labels are known."""
    rng = np.random.default_rng(12)

    def draw(n: int) -> tuple[list[dict[str, float]], list[str]]:
        probabilities = rng.dirichlet([0.6, 0.6, 0.6], size=n)
        labels = [CLASSES[int(rng.choice(3, p=p))] for p in probabilities]
        return [dict(zip(CLASSES, map(float, p), strict=True)) for p in probabilities], labels

    ref_scores, ref_labels = draw(3000)
    reference = pd.DataFrame({"size": 1.0, "region": "north", "scores": map(json.dumps, ref_scores)})
    reference["label"] = ref_labels
    reference["prediction"] = [max(s, key=s.__getitem__) for s in ref_scores]
    reference.to_csv(tmp_path / "reference.csv", index=False)
    species = fleet().model("species").model_dump(exclude_unset=True) | {
        "reference": {"kind": "file", "path": str(tmp_path / "reference.csv")},
        "windows": {"quality": "30m", "min_rows": 50},
    }
    config = WatchkeeperConfig.model_validate({"models": [species]})
    scores, labels = draw(600)
    predicted = [max(s, key=s.__getitem__) for s in scores]
    with LiveService(config, store) as service:
        records = [
            {**prediction("species", i, predicted[i], "north"), "scores": scores[i]} for i in range(600)
        ]
        assert post(service.url, "/v1/predictions", records).status_code == 200
        sent = [label("species", i, labels[i]) for i in range(300)]
        assert post(service.url, "/v1/feedback", sent).status_code == 200
        collect_with_reference(store, config, "species")
        got = exported(service.url, "species")
    calibrated = np.column_stack(
        [
            IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
            .fit([s[c] for s in ref_scores], [label == c for label in ref_labels])
            .predict([s[c] for s in scores[300:]])
            for c in CLASSES
        ]
    )
    calibrated /= calibrated.sum(axis=1, keepdims=True)
    right = [calibrated[i, CLASSES.index(p)] for i, p in enumerate(predicted[300:])]
    estimated = one(got["ai_model_estimated_accuracy_score"])
    assert estimated == pytest.approx(np.mean(right), abs=1e-5)
    realised = accuracy_score(labels[300:], predicted[300:])
    assert abs(estimated - realised) < 0.06
    expected = np.zeros((3, 3))
    for row, p in zip(calibrated, predicted[300:], strict=True):
        expected[CLASSES.index(p)] += row
    f1 = [2 * expected[c, c] / (expected[c].sum() + expected[:, c].sum()) for c in range(3)]
    assert one(got["ai_model_estimated_f1_macro_score"]) == pytest.approx(np.mean(f1), abs=1e-5)
    assert one(got["ai_model_estimated_predictions"]) == 300


@pytest.mark.parametrize(
    ("model", "scores", "field", "expected"),
    [
        ("demand", {"cat": 0.5}, "scores", "'scores' is for multiclass models; demand is a regression model"),
        ("species", {"cat": 1.5}, "scores.cat", "less than or equal to 1"),
        ("species", [0.2, 0.8], "scores", "valid dictionary"),
    ],
)
def test_scores_out_of_place_or_shape_are_refused_naming_the_field(
    store: Store, model: str, scores: Any, field: str, expected: str
) -> None:
    value = 3.0 if model == "demand" else "cat"
    with LiveService(fleet(), store) as service:
        answer = post(
            service.url, "/v1/predictions", [{**prediction(model, 0, value, "north"), "scores": scores}]
        )
    assert answer.status_code == 422 and answer.json()["field"] == field
    assert expected in answer.json()["error"]


def test_a_regression_models_target_and_residual_drift_are_measured_against_its_reference(
    example_config: WatchkeeperConfig, store: Store
) -> None:
    """The demand demo clean (v1) and with every forecast 4 units high (v2): the residuals moved,
    the target did not; each score is scipy's normed Wasserstein distance on the same values,
    within the 1 % sketch's accuracy."""
    model = example_config.model("demand_forecast")
    assert model is not None
    sent: dict[str, list[tuple[float, float]]] = {}
    reference = pd.DataFrame()
    with LiveService(example_config, store) as service:
        for version, injections in (("v1", KindInjections()), ("v2", KindInjections(regression_bias_at=0))):
            traffic = RegressionTraffic(
                model_version=version, train_size=1500, seed=8, injections=injections, reference_size=800
            )
            reference = traffic.reference
            events = traffic.next_batch(400)
            sent[version] = [(e.prediction, e.label) for e in events]
            now = utcnow() - timedelta(minutes=1)
            # The same stream under each version: request ids of their own.
            events = [replace(e, request_id=f"{version}-{e.request_id}") for e in events]
            predictions = [traffic.prediction_record(e, now) for e in events]
            feedback = [traffic.feedback_record(e, now) for e in events]
            assert post(
                service.url, "/v1/predictions", json.loads(json.dumps(predictions, default=str))
            ).is_success
            assert post(service.url, "/v1/feedback", json.loads(json.dumps(feedback, default=str))).is_success
        collect(store, example_config, "demand_forecast", derive(model, reference))
        found = {
            (sample.name, sample.labels.get("model_version")): sample.value
            for family in text_string_to_metric_families(httpx.get(f"{service.url}/metrics").text)
            for sample in family.samples
            if sample.labels.get("model_name") == "demand_forecast"
        }
    targets = reference["label"].to_numpy()
    residuals = reference["prediction"].to_numpy() - targets
    for version in ("v1", "v2"):
        labels = np.array([y for _, y in sent[version]])
        errors = np.array([p - y for p, y in sent[version]])
        target = wasserstein_distance(labels, targets) / targets.std()
        residual = wasserstein_distance(errors, residuals) / residuals.std()
        assert found[("ai_model_target_drift_score", version)] == pytest.approx(target, rel=0.02, abs=0.005)
        assert found[("ai_model_residual_drift_score", version)] == pytest.approx(
            residual, rel=0.02, abs=0.005
        )
    assert (
        found[("ai_model_target_drift_score", "v2")]
        < 0.1
        < 1.0
        < found[("ai_model_residual_drift_score", "v2")]
    )
    assert found[("ai_model_residual_drift_score", "v1")] < 0.1


def test_a_label_for_a_prediction_served_under_the_models_earlier_task_is_joined_not_refused(
    store: Store,
) -> None:
    """A classifier reconfigured as a regression model: labels still due for its class predictions
    are accepted and counted as joined; a 5xx would have had their senders retry forever."""
    binary = WatchkeeperConfig.model_validate(
        {"models": [{"name": "demand", "version": "v1", "features": FEATURES}]}
    )
    with LiveService(binary, store) as service:
        assert (
            post(service.url, "/v1/predictions", [prediction("demand", 0, "high", "north")]).status_code
            == 200
        )
    with LiveService(fleet(), store) as service:
        answer = post(service.url, "/v1/feedback", [label("demand", 0, 3.5)])
        fresh = post(service.url, "/v1/predictions", [prediction("demand", 1, 2.0, "north")])
        assert post(service.url, "/v1/feedback", [label("demand", 1, 3.0)]).status_code == 200
        collect(store, fleet(), "demand")
        got = exported(service.url, "demand")
    assert answer.status_code == 200 and fresh.status_code == 200
    assert sum(got["watchkeeper_feedback_total"].values()) == 2
    assert one(got["ai_model_mae"]) == pytest.approx(1.0)  # the one measurable pair


def test_a_classifiers_own_accuracy_limits_are_exported_for_the_accuracy_rules(store: Store) -> None:
    models = [
        {
            **m.model_dump(exclude_unset=True),
            "thresholds": {"accuracy_warning": 0.7, "accuracy_critical": 0.55},
        }
        if m.name == "species"
        else m.model_dump(exclude_unset=True)
        for m in fleet().models
    ]
    models.append({"name": "fraud", "version": "v1", "features": FEATURES})
    config = WatchkeeperConfig.model_validate({"models": models})
    with LiveService(config, store) as service:
        assert post(service.url, "/v1/predictions", [prediction("species", 0, "cat", "north")]).is_success
        assert post(service.url, "/v1/predictions", [prediction("fraud", 0, 1, "north")]).is_success
        for name in ("species", "fraud"):
            collect(store, config, name)
        limits = {
            name: exported(service.url, name).get("ai_model_quality_limits", {})
            for name in ("species", "fraud")
        }
    assert one(limits["species"], limit="accuracy_warning") == 0.7
    assert one(limits["species"], limit="accuracy_critical") == 0.55
    assert limits["fraud"] == {}  # the seed's 0.85 and 0.75 apply


def evidently_at_k(metric: Any, frame: pd.DataFrame, k: int) -> float:
    """Evidently's recommender metric at k, on rows of (user_id, item_id, target, prediction rank)."""
    definition = DataDefinition(
        numerical_columns=["target", "prediction"], ranking=[Recsys(recommendations_type="rank")]
    )
    snapshot = Report([metric]).run(Dataset.from_pandas(frame, data_definition=definition), None)
    return float(list(snapshot.dict()["metrics"][0]["value"]["value"].values())[k - 1])


def test_a_ranking_models_scores_are_evidentlys_recommender_metrics(store: Store, tmp_path: Path) -> None:
    """Evidently's NDCG, MRR, hit rate and precision at k over every request with feedback
    (`no_feedback_users=True`), its recall over those with a relevant item; the items with feedback
    that were not recommended ranked past every list, so that they count in the ideal ranking."""
    config = ranking_fleet(tmp_path)
    rng = np.random.default_rng(21)
    lists = ranked_lists(rng, 250)
    rows, feedback = [], {}
    for i, ranked in enumerate(lists):
        clicked = {item: int(rng.integers(1, 4)) for item in ranked if rng.random() < 0.25}
        if rng.random() < 0.3:
            clicked[str(rng.choice(CATALOGUE))] = 1
        feedback[i] = clicked
        rows += [(i, item, clicked.get(item, 0), rank) for rank, item in enumerate(ranked, start=1)]
        rows += [(i, item, value, 1000) for item, value in clicked.items() if item not in ranked]
    with LiveService(config, store) as service:
        records = [prediction("shop", i, {"items": lists[i]}, "north") for i in range(len(lists))]
        assert post(service.url, "/v1/predictions", records).is_success
        sent = [
            label("shop", i, {"items": list(c), "relevance": list(c.values())}) for i, c in feedback.items()
        ]
        assert post(service.url, "/v1/feedback", sent).is_success
        collect_with_reference(store, config, "shop")
        got = exported(service.url, "shop")
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "target", "prediction"])
    for k in (3, 5):
        at_k = {"k": str(k)}
        everyone = {"k": k, "no_feedback_users": True}
        assert one(got["ai_model_ndcg_at_k_score"], **at_k) == pytest.approx(
            evidently_at_k(NDCG(**everyone), frame, k)
        )
        assert one(got["ai_model_hit_rate_at_k_score"], **at_k) == pytest.approx(
            evidently_at_k(HitRate(**everyone), frame, k)
        )
        assert one(got["ai_model_precision_at_k_score"], **at_k) == pytest.approx(
            evidently_at_k(PrecisionTopK(**everyone), frame, k)
        )
        assert one(got["ai_model_recall_at_k_score"], **at_k) == pytest.approx(
            evidently_at_k(RecallTopK(k=k), frame, k)
        )
    longest = len(lists[0])
    assert one(got["ai_model_mrr_score"]) == pytest.approx(
        evidently_at_k(MRR(k=longest, no_feedback_users=True), frame, longest)
    )
