"""Text and embedding features: their config, their shape at intake, their drift (checked against
Evidently's own embedding drift metric and plain arithmetic), and the demo's through the real path:
records posted to the service, the stored sample, a Parquet reference, the drift task, `/metrics`."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import EmbeddingsDrift
from evidently.metrics.embeddings import ModelDriftMethod
from scipy.spatial.distance import euclidean

from tasks.drift import ColumnSpec, compute_drift, evaluate_drift_window
from tasks.embeddings import auc_p_value, embedding_drift
from tasks.logs import reference_frame
from tasks.metrics import Window
from tasks.text_descriptors import text_descriptors
from tests.conftest import LiveService
from tests.test_model_kinds import exported, one, post
from watchkeeper.config import ConfigError, WatchkeeperConfig, load_config
from watchkeeper.local.demo import run_demo_traffic, write_reference
from watchkeeper.local.demo_kinds import EMBEDDING_DIM, KindInjections, RecommendationTraffic
from watchkeeper.store import Store
from watchkeeper.store.samples import Sampling
from watchkeeper.times import utcnow

FEATURES = [
    {"name": "amount", "type": "numerical"},
    {"name": "note", "type": "text"},
    {"name": "vector", "type": "embedding", "dim": 3},
]


def searcher(reference: Path | None = None) -> WatchkeeperConfig:
    model: dict[str, Any] = {"name": "search", "version": "v1", "features": FEATURES}
    if reference is not None:
        model["reference"] = {"kind": "file", "path": str(reference)}
    return WatchkeeperConfig.model_validate({"models": [model]})


def record(i: int, features: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_name": "search",
        "model_version": "v1",
        "request_id": f"search-{i}",
        "timestamp": utcnow().isoformat(),
        "features": features,
        "prediction": 1,
    }


GOOD = {"amount": 3.0, "note": "red coat", "vector": [0.1, -2, 3.5]}


@pytest.mark.parametrize(
    ("feature", "expected"),
    [
        ({"type": "embedding"}, "an embedding feature needs 'dim'"),
        ({"type": "numerical", "dim": 4}, "'dim' is for embedding features"),
        ({"type": "embedding", "dim": 0}, "dim: Input should be greater than or equal to 1"),
        (
            {"type": "embedding", "dim": 4, "drift_method": "psi"},
            "one of model, mmd, distance, ratio, not 'psi'",
        ),
    ],
)
def test_a_features_kind_is_checked_when_the_config_loads(
    tmp_path: Path, feature: dict[str, Any], expected: str
) -> None:
    model = {"name": "search", "version": "v1", "features": [{"name": "vector", **feature}]}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({"models": [model]}))
    with pytest.raises(ConfigError, match="models\\[0\\].features\\[0\\]") as raised:
        load_config(tmp_path / "w.yaml")
    assert expected in str(raised.value)


def test_a_text_or_embedding_feature_cannot_segment(tmp_path: Path) -> None:
    model = {"name": "search", "version": "v1", "features": FEATURES, "segments": [{"column": "note"}]}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({"models": [model]}))
    with pytest.raises(
        ConfigError, match="'note' is a text feature: expected a numerical or categorical one"
    ):
        load_config(tmp_path / "w.yaml")


@pytest.mark.parametrize(
    ("vector", "field", "expected"),
    [
        ([0.1, 0.2], "features.vector", "expected an array of 3 numbers (the embedding's dim), got 2"),
        ([0.1, 0.2, 0.3, 0.4], "features.vector", "got 4"),
        ([0.1, "0.2", 0.3], "features.vector[1]", "expected a finite number"),
        ([0.1, None, 0.3], "features.vector[1]", "expected a finite number"),
        ([0.1, 0.2, True], "features.vector[2]", "expected a finite number"),
        ({"x": 1}, "features.vector", "expected an array of 3 numbers"),
        ("NaN", "features.vector[2]", "expected a finite number (not NaN"),
    ],
)
def test_an_embedding_out_of_shape_refuses_its_batch_naming_the_field(
    store: Store, vector: Any, field: str, expected: str
) -> None:
    with LiveService(searcher(), store) as service:
        if vector == "NaN":  # what Python's json.dumps writes for float("nan")
            body = json.dumps([record(0, GOOD), record(1, {**GOOD, "vector": [0.1, 0.2, float("nan")]})])
            answer = httpx.post(
                f"{service.url}/v1/predictions", content=body, headers={"content-type": "application/json"}
            )
        else:
            answer = post(
                service.url, "/v1/predictions", [record(0, GOOD), record(1, {**GOOD, "vector": vector})]
            )
        totals = exported(service.url, "search")
    assert answer.status_code == 422
    assert (answer.json()["index"], answer.json()["field"]) == (1, field)
    assert expected in answer.json()["error"]
    assert not totals.get("watchkeeper_predictions_total")


def test_a_null_embedding_or_a_text_that_is_not_a_string_is_counted_not_refused(
    store: Store, tmp_path: Path
) -> None:
    """Against a CSV reference, where each vector is its JSON text."""
    reference = pd.DataFrame({"amount": [1.0, 5.0], "note": ["a", "b"], "vector": ["[0, 1, 2]", "[1, 1, 1]"]})
    reference.to_csv(tmp_path / "reference.csv", index=False)
    records = [record(0, GOOD), record(1, {**GOOD, "vector": None}), record(2, {**GOOD, "note": 42})]
    with LiveService(searcher(tmp_path / "reference.csv"), store) as service:
        assert post(service.url, "/v1/predictions", records).status_code == 200
        totals = exported(service.url, "search")
    assert sum(totals["watchkeeper_predictions_total"].values()) == 3
    failures = {
        (dict(labels)["check"], dict(labels)["column"]): value
        for labels, value in totals["ai_data_record_check_failures_total"].items()
    }
    assert failures == {("null", "vector"): 1.0, ("type_mismatch", "note"): 1.0}


def test_a_texts_descriptors_are_its_length_non_letters_and_words_the_reference_never_had() -> None:
    reference = pd.Series(["red coat", "Red boots!", "warm coat", None, "zebra"])
    current = pd.Series(["red zebra hat", "42", "", None])
    ref, cur = text_descriptors("note", reference, current)
    assert list(ref.columns) == ["note.length", "note.non_letter_share", "note.oov_share"]
    assert ref["note.length"].tolist()[:3] == [8.0, 10.0, 9.0]
    assert ref["note.non_letter_share"].tolist()[:3] == pytest.approx([0.0, 1 / 9, 0.0])
    # Leave-one-out: "boots" and "warm" and "zebra" appear in one reference row only.
    assert ref["note.oov_share"].tolist()[:3] == pytest.approx([0.0, 0.5, 0.5])
    assert ref["note.oov_share"].tolist()[4] == 1.0
    assert np.isnan(ref["note.length"].iloc[3]) and np.isnan(cur["note.length"].iloc[3])
    assert cur["note.oov_share"].tolist()[:3] == pytest.approx([1 / 3, 0.0, 0.0])
    assert cur["note.non_letter_share"].tolist()[:3] == pytest.approx([0.0, 1.0, 0.0])


def test_an_embeddings_drift_score_is_evidentlys_and_its_centroid_distance_is_euclids() -> None:
    rng = np.random.default_rng(3)
    reference, current = rng.normal(size=(1500, 6)), rng.normal(size=(700, 6)) + 0.1
    columns = [f"v{i}" for i in range(6)]
    definition = DataDefinition(numerical_columns=columns, embeddings={"vector": columns})
    snapshot = Report([EmbeddingsDrift(embeddings_name="vector", drift_method=ModelDriftMethod())]).run(
        Dataset.from_pandas(pd.DataFrame(current, columns=columns), data_definition=definition),
        Dataset.from_pandas(pd.DataFrame(reference, columns=columns), data_definition=definition),
    )
    theirs = snapshot.dict()["metrics"][0]["value"]
    ours = embedding_drift("vector", reference, current)
    assert ours.score == pytest.approx(theirs)
    assert ours.centroid_distance == pytest.approx(euclidean(reference.mean(axis=0), current.mean(axis=0)))
    assert ours.p_value == pytest.approx(auc_p_value(theirs, 1500, 700))
    for method in ("mmd", "distance", "ratio"):
        assert embedding_drift("vector", reference, current, method).method == method


def test_stable_embeddings_stay_quiet_where_chance_passes_the_threshold_and_a_new_encoder_drifts() -> None:
    rng = np.random.default_rng(4)
    verdicts, passed_threshold = [], 0
    for _ in range(30):
        found = embedding_drift("v", rng.normal(size=(400, 8)), rng.normal(size=(200, 8)))
        verdicts.append(found.drifted)
        passed_threshold += found.score > found.threshold
    assert not any(verdicts)
    assert passed_threshold > 0  # a fixed AUC threshold alone would have paged on these windows
    rotated = rng.normal(size=(400, 8)) @ np.linalg.qr(rng.normal(size=(8, 8)))[0] + 0.3
    assert embedding_drift("v", rng.normal(size=(400, 8)), rotated).drifted


def test_text_and_embedding_columns_count_in_the_drift_share() -> None:
    rng = np.random.default_rng(6)
    words = ["red", "blue", "coat", "boot", "warm", "cheap", "summer", "hat"]

    def frame(n: int, vocabulary: list[str], shift: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "note": [" ".join(rng.choice(vocabulary, size=3)) for _ in range(n)],
                "vector": [list(rng.normal(size=3) + shift) for _ in range(n)],
            }
        )

    specs = [ColumnSpec("note", "text"), ColumnSpec("vector", "embedding", dim=3)]
    stable = compute_drift(frame(1000, words, 0), frame(400, words, 0), specs)
    assert stable.share == 0.0 and not stable.embeddings[0].drifted
    moved = compute_drift(frame(1000, words, 0), frame(400, ["qq1", "zz2!", *words], 1.0), specs)
    drifted = {c.column for c in moved.columns if c.drifted} | {
        e.feature for e in moved.embeddings if e.drifted
    }
    # Words of about the same length: the length holds, the rest moves.
    assert drifted == {"note.non_letter_share", "note.oov_share", "vector"}
    assert moved.share == 0.75


def test_the_demos_new_encoder_drifts_its_embedding_on_metrics_and_its_stable_text_does_not(
    example_config: WatchkeeperConfig, store: Store, tmp_path: Path
) -> None:
    """The recommender demo through the service, its reference through Parquet as `make up` writes
    it; a clean version and one whose encoder changed."""
    model = example_config.model("product_recommendations")
    assert model is not None and model.embeddings == {"query_embedding": EMBEDDING_DIM}
    clean = RecommendationTraffic(train_size=1000, seed=5, reference_size=800)
    path = tmp_path / "reference.parquet"
    assert write_reference(clean.reference, path)
    configured = model.model_copy(update={"reference": model.reference.model_copy(update={"path": path})})
    sampling = Sampling.of(example_config)
    reference = reference_frame(store, configured, sampling)
    assert isinstance(reference["query_embedding"].iloc[0], np.ndarray)  # Parquet's lists
    found = {}
    for version, injections in (("v1", KindInjections()), ("v2", KindInjections(embedding_drift_at=0))):
        # The reference's world (its seed), and traffic after the rows it held back.
        traffic = RecommendationTraffic(train_size=1000, seed=5, injections=injections, reference_size=800)
        versioned = configured.model_copy(update={"name": f"recs_{version}"})
        fleet = example_config.model_copy(update={"models": [*example_config.models, versioned]})
        traffic.model_name = versioned.name
        with LiveService(fleet, store) as service:
            run_demo_traffic(traffic, url=service.url, rate=0, count=600, batch_size=200, label_delay=0)
            end = utcnow() + timedelta(minutes=1)
            window = Window(end - timedelta(minutes=30), end)
            found[version] = evaluate_drift_window.fn(
                store, versioned, window, reference, tmp_path, sampling, None
            )
            found[version + "_metrics"] = exported(service.url, versioned.name)
    assert found["v1"].drifted == () and found["v2"].drifted == ("query_embedding",)
    assert "query_embedding | model (embedding)" in found["v2"].markdown
    embedding = {"feature_name": "query_embedding"}
    assert one(found["v1_metrics"]["ai_data_embedding_drift_detected"], **embedding) == 0.0
    assert one(found["v2_metrics"]["ai_data_embedding_drift_detected"], **embedding) == 1.0
    moved = [
        one(found[v + "_metrics"]["ai_model_embedding_centroid_distance"], **embedding) for v in ("v1", "v2")
    ]
    assert moved[1] > 1.0 and moved[1] > 3 * moved[0]
    descriptors = {dict(labels)["feature_name"] for labels in found["v1_metrics"]["ai_data_drift_detected"]}
    assert {"query.length", "query.non_letter_share", "query.oov_share"} <= descriptors
