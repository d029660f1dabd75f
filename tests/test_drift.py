"""Drift: Evidently's scores against scipy, detection on the demo stream, and the false alarm rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasks.drift import ColumnSpec, benjamini_hochberg, compute_drift, infer_columns, two_sample_chi_square
from watchkeeper.config import DEFAULT_DRIFT_P_VALUE
from watchkeeper.local.demo import CATEGORICAL, FEATURES, DemoEvent, DemoTraffic, Injections

RNG = np.random.default_rng(20261126)


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index on Sturges bins of both samples, empty bins floored at 1e-4."""
    edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
    ref = np.histogram(reference, edges)[0] / len(reference)
    cur = np.histogram(current, edges)[0] / len(current)
    ref, cur = np.where(ref == 0, 1e-4, ref), np.where(cur == 0, 1e-4, cur)
    return float(np.sum((ref - cur) * np.log(ref / cur)))


def one_column(reference: np.ndarray, current: np.ndarray, method: str | None):  # noqa: ANN201
    result = compute_drift(
        pd.DataFrame({"x": reference}), pd.DataFrame({"x": current}), [ColumnSpec("x", "numerical", method)]
    )
    return result.columns[0]


def test_default_method_on_small_samples_is_the_ks_p_value_at_the_monitoring_level() -> None:
    reference, current = RNG.normal(0, 1, 600), RNG.normal(0.25, 1, 500)
    drift = one_column(reference, current, None)
    assert (drift.method, drift.threshold) == ("ks", DEFAULT_DRIFT_P_VALUE)
    assert drift.score == pytest.approx(stats.ks_2samp(reference, current).pvalue, rel=1e-9)
    assert drift.drifted == (drift.score < drift.threshold)


def test_a_configured_threshold_or_model_level_wins_over_the_default() -> None:
    reference, current = RNG.normal(0, 1, 600), RNG.normal(0.1, 1, 500)
    frames = pd.DataFrame({"x": reference}), pd.DataFrame({"x": current})
    configured = compute_drift(*frames, [ColumnSpec("x", "numerical", "ks", 0.2)], p_value_level=0.01)
    model_level = compute_drift(*frames, [ColumnSpec("x", "numerical")], p_value_level=0.01)
    assert [c.threshold for c in configured.columns + model_level.columns] == [0.2, 0.01]


def test_two_sample_chi_square_holds_its_level_where_evidently_s_does_not() -> None:
    """Stable 20-valued categories, 1,000-row windows against a 5,000-row reference: the test of
    homogeneity flags about 5% at the 5% level; treating the reference's shares as exact (Evidently's
    `chisquare`) flags about three times as many."""
    rng = np.random.default_rng(3)
    ours, exact_shares = [], []
    for _ in range(400):
        reference, current = pd.Series(rng.integers(0, 20, 5000)), pd.Series(rng.integers(0, 20, 1000))
        ours.append(two_sample_chi_square(reference, current))
        counts = pd.concat([reference.value_counts(), current.value_counts()], axis=1).fillna(0)
        expected = counts.iloc[:, 0] * len(current) / len(reference)
        exact_shares.append(stats.chisquare(counts.iloc[:, 1], expected).pvalue)
    assert np.mean(np.array(ours) < 0.05) <= 0.08
    assert np.mean(np.array(exact_shares) < 0.05) >= 0.1
    assert two_sample_chi_square(pd.Series(["a"] * 10), pd.Series(["a"] * 5)) == 1.0


def test_p_values_and_distances_are_exported_under_their_own_names() -> None:
    small = compute_drift(
        pd.DataFrame({"x": RNG.normal(size=300)}),
        pd.DataFrame({"x": RNG.normal(size=300)}),
        [ColumnSpec("x", "numerical")],
    )
    large = compute_drift(
        pd.DataFrame({"x": RNG.normal(size=3000)}),
        pd.DataFrame({"x": RNG.normal(size=3000)}),
        [ColumnSpec("x", "numerical")],
    )
    assert "drift_p_value" in {m.metric for m in small.measurements()} - {
        m.metric for m in large.measurements()
    }
    assert "drift_score" in {m.metric for m in large.measurements()} - {
        m.metric for m in small.measurements()
    }


def test_default_method_on_large_samples_is_normed_wasserstein() -> None:
    reference, current = RNG.normal(10, 2, 5000), RNG.normal(10.5, 2, 4000)
    drift = one_column(reference, current, None)
    assert drift.method.startswith("Wasserstein")
    expected = stats.wasserstein_distance(reference, current) / np.std(reference)
    assert drift.score == pytest.approx(expected, rel=1e-9)
    assert drift.drifted and drift.threshold == 0.1


def test_psi_by_name() -> None:
    reference, current = RNG.lognormal(0, 0.5, 3000), RNG.lognormal(0.2, 0.5, 3000)
    drift = one_column(reference, current, "psi")
    assert drift.method == "psi"
    assert drift.score == pytest.approx(psi(reference, current), rel=1e-9)


def test_columns_missing_or_empty_are_reported_as_skipped() -> None:
    reference = pd.DataFrame({"a": RNG.normal(size=300), "b": RNG.normal(size=300)})
    current = pd.DataFrame({"a": RNG.normal(size=300), "b": [None] * 300})
    result = compute_drift(
        reference,
        current,
        [ColumnSpec("a", "numerical"), ColumnSpec("b", "numerical"), ColumnSpec("c", "numerical")],
    )
    assert [c.column for c in result.columns] == ["a"]
    assert result.skipped == {
        "b": "fewer than 2 non-null values in the current data",
        "c": "missing from the reference data",
    }


def test_column_types_are_inferred_from_the_reference() -> None:
    frame = pd.DataFrame({"n": RNG.normal(size=100), "k": RNG.integers(0, 4, 100), "s": ["x"] * 100})
    assert [(c.name, c.type) for c in infer_columns(frame)] == [
        ("n", "numerical"),
        ("k", "categorical"),
        ("s", "categorical"),
    ]
    with pytest.raises(KeyError, match="'z' is not in the reference"):
        infer_columns(frame, ["z"])


WINDOW = 1200  # above Evidently's 1,000-row switch to distance-based methods
SPECS = [ColumnSpec(f, "categorical" if f in CATEGORICAL else "numerical") for f in FEATURES]
PREDICTION = ColumnSpec("prediction", "categorical")


def frame(events: list[DemoEvent]) -> pd.DataFrame:
    return pd.DataFrame(
        [{**e.features, "prediction": e.prediction, "label": e.label, "error": e.error} for e in events]
    )


def alarms(reference: pd.DataFrame, window: pd.DataFrame) -> dict[str, bool]:
    """What the shipped monitors would raise for one window: feature drift and degraded accuracy."""
    drift = compute_drift(reference, window, SPECS, 0.5, PREDICTION)
    served = window[~window["error"]]
    accuracy = float((served["prediction"] == served["label"]).mean())
    return {"feature_drift": any(c.drifted for c in drift.columns), "accuracy": accuracy < 0.85}


@pytest.fixture(scope="module")
def demo_windows() -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Reference, then 22 stationary windows, 3 after concept drift, 3 after covariate drift too."""
    traffic = DemoTraffic(
        train_size=5000,
        seed=11,
        injections=Injections(
            concept_drift_at=(1 + 22) * WINDOW + 100, covariate_drift_at=(1 + 25) * WINDOW + 100
        ),
    )
    reference = frame(traffic.next_batch(WINDOW))
    return reference, [frame(traffic.next_batch(WINDOW)) for _ in range(28)]


def test_stationary_windows_stay_quiet(demo_windows) -> None:  # noqa: ANN001
    reference, windows = demo_windows
    raised = [any(alarms(reference, w).values()) for w in windows[:22]]
    assert sum(raised) / len(raised) <= 0.05


def test_concept_and_covariate_drift_are_caught_within_two_windows(demo_windows) -> None:  # noqa: ANN001
    reference, windows = demo_windows
    concept = [alarms(reference, w)["accuracy"] for w in windows[22:24]]
    covariate = [alarms(reference, w)["feature_drift"] for w in windows[25:27]]
    assert any(concept), "concept drift (the Agrawal function changed) not caught"
    assert any(covariate), "covariate drift (salary and age shifted) not caught"
    drifted = compute_drift(reference, windows[26], SPECS, 0.5, PREDICTION)
    assert {c.column for c in drifted.columns if c.drifted} == {"salary", "age"}


# --- p-value verdicts corrected for multiple testing --------------------------------------------


def test_benjamini_hochberg_matches_scipy() -> None:
    p_values = list(RNG.uniform(size=40) ** 3)
    assert benjamini_hochberg(p_values) == pytest.approx(
        list(stats.false_discovery_control(p_values)), rel=1e-12
    )


SMALL = 400  # a window under Evidently's 1,000-row switch: against a 1,000-row reference, p-value tests


def test_small_stable_windows_stay_quiet_and_a_small_drifted_one_is_caught() -> None:
    """K-S on the demo's numerical features: the corrected verdicts stay quiet on 20 stable windows,
    and a covariate drift in a 400-row window is a verdict (what DataDriftDetected fires on)."""
    numerical = [s for s in SPECS if s.type == "numerical"]
    traffic = DemoTraffic(
        train_size=2000, seed=5, injections=Injections(covariate_drift_at=1000 + 20 * SMALL)
    )
    reference = frame(traffic.next_batch(1000))
    results = [compute_drift(reference, frame(traffic.next_batch(SMALL)), numerical) for _ in range(21)]
    assert all(c.method == "ks" and c.adjusted_p_value is not None for r in results for c in r.columns)
    assert sum(any(c.drifted for c in r.columns) for r in results[:20]) <= 1
    assert {c.column for c in results[20].columns if c.drifted} == {"salary", "age"}
    exported = {(m.metric, m.labels.get("feature_name")): m.value for m in results[20].measurements()}
    assert exported[("drift_detected", "salary")] == 1.0
    assert exported[("drift_adjusted_p_value", "salary")] < DEFAULT_DRIFT_P_VALUE


def test_a_small_window_against_a_large_reference_is_tested_not_measured() -> None:
    """Evidently would measure a 200-row window by distances (the reference has 5,000 rows); a
    distance on 200 rows of a 20-valued category is noise above its threshold, a test is not."""
    traffic = DemoTraffic(train_size=1000, seed=11, reference_size=5000)
    reference = traffic.reference
    current = pd.DataFrame([e.features for e in traffic.next_batch(200)])
    specs = [ColumnSpec(name, "categorical" if name in CATEGORICAL else "numerical") for name in FEATURES]
    result = compute_drift(reference, current, specs)
    methods = {c.column: c.method for c in result.columns}
    assert (methods["car"], methods["salary"]) == ("chisquare_two_sample", "ks")
    assert not any(c.drifted for c in result.columns)
    shifted = current.assign(salary=current["salary"] * 1.6 + 20_000)
    assert {c.column for c in compute_drift(reference, shifted, specs).columns if c.drifted} == {"salary"}
