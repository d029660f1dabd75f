"""Quality of multiclass and regression models from a window's summed buckets (plain logic).

Multiclass scores follow scikit-learn's definitions over the classes seen in the window's labels or
predictions (`f1_score(average="macro" | "weighted")`, a class never predicted has precision 0).
Regression scores follow from the sums kept per bucket (`REGRESSION_SUMS`): MAE, RMSE, the mean
error (bias, prediction - label), MAPE over the labels that are not zero (with the count left
out), R² (1 - SS_res / SS_tot) and quantiles of the absolute error from its sketch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from tasks.measurements import Measurement
from watchkeeper.intake.aggregates import ZERO_LATENCY, parts, signed_value

ABSOLUTE_ERROR_QUANTILES = (0.5, 0.9, 0.99)


def confusion_cells(outcomes: Counter[str]) -> Counter[tuple[str, str]]:
    """(predicted, actual) -> labelled predictions, from the `outcome` measure."""
    cells: Counter[tuple[str, str]] = Counter()
    for text, n in outcomes.items():
        if n > 0:
            predicted, actual = parts(text)
            cells[(predicted, actual)] += n
    return cells


def multiclass_scores(cells: Counter[tuple[str, str]]) -> list[Measurement]:
    """Accuracy, per-class precision, recall, F1 and support, macro and weighted F1, and the
    confusion matrix (bounded: its classes are the configured ones and `_other_`)."""
    total = sum(cells.values())
    if total <= 0:
        return []
    classes = sorted({c for pair in cells for c in pair})
    predicted = Counter[str]()
    actual = Counter[str]()
    for (p, a), n in cells.items():
        predicted[p] += n
        actual[a] += n
    found = [Measurement("accuracy", sum(cells[(c, c)] for c in classes) / total)]
    f1s: dict[str, float] = {}
    for c in classes:
        tp = cells[(c, c)]
        fp, fn = predicted[c] - tp, actual[c] - tp
        f1s[c] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        labels = {"class": c}
        found += [
            Measurement("class_precision", tp / predicted[c] if predicted[c] else 0.0, labels),
            Measurement("class_recall", tp / actual[c] if actual[c] else 0.0, labels),
            Measurement("class_f1", f1s[c], labels),
            Measurement("class_support", float(actual[c]), labels),
        ]
    found += [
        Measurement("f1_macro", sum(f1s.values()) / len(classes)),
        Measurement("f1_weighted", sum(f1s[c] * actual[c] for c in classes) / total),
    ]
    found += [
        Measurement("confusion", float(n), {"predicted_class": p, "actual_class": a})
        for (p, a), n in sorted(cells.items())
    ]
    return found


def sketch_quantile(sketch: Counter[str], q: float, value_of: Callable[[str], float]) -> float | None:
    """The q-quantile (rank q * (n - 1), pandas' default) of a log-bucketed sketch whose buckets
    stand for `value_of(index)`."""
    values = sorted((value_of(index), n) for index, n in sketch.items() if n > 0)
    count = sum(n for _, n in values)
    if count <= 0:
        return None
    rank, seen = q * (count - 1), 0.0
    for value, n in values:
        seen += n
        if seen > rank:
            return value
    return values[-1][0]


def _absolute(index: str) -> float:
    return abs(signed_value(index)) if index != ZERO_LATENCY else 0.0


def regression_scores(sums: Counter[str], error_sketch: Counter[str]) -> list[Measurement]:
    """MAE, RMSE, mean error, MAPE (and the labels it leaves out), R² and absolute-error quantiles."""
    n = sums["n"]
    if n <= 0:
        return []
    found = [
        Measurement("mae", sums["abs"] / n),
        Measurement("rmse", math.sqrt(max(0.0, sums["sq"]) / n)),
        Measurement("mean_error", sums["error"] / n),
        Measurement("mape_excluded_labels", n - sums["ape_n"]),
    ]
    if sums["ape_n"] > 0:
        found.append(Measurement("mape", sums["ape"] / sums["ape_n"]))
    spread = sums["label_sq"] - sums["label"] ** 2 / n
    if spread > 1e-12 * max(1.0, sums["label_sq"]):
        found.append(Measurement("r2", 1.0 - sums["sq"] / spread))
    for q in ABSOLUTE_ERROR_QUANTILES:
        value = sketch_quantile(error_sketch, q, _absolute)
        if value is not None:
            found.append(Measurement("absolute_error_quantile", value, {"quantile": f"{q:g}"}))
    return found


def ranking_quality(sums: Counter[str], cutoffs: list[int]) -> list[Measurement]:
    """Means over the requests with feedback: precision@k, NDCG@k and hit rate@k over all of them,
    recall@k over those with at least one relevant item, and the mean reciprocal rank."""
    n, relevant = sums["n"], sums["relevant"]
    if n <= 0:
        return []
    found = [Measurement("mrr", sums["rr"] / n), Measurement("relevant_requests", relevant)]
    for k in cutoffs:
        labels = {"k": str(k)}
        found += [
            Measurement("precision_at_k", sums[f"precision@{k}"] / n, labels),
            Measurement("ndcg_at_k", sums[f"ndcg@{k}"] / n, labels),
            Measurement("hit_rate_at_k", sums[f"hit@{k}"] / n, labels),
        ]
        if relevant > 0:
            found.append(Measurement("recall_at_k", sums[f"recall@{k}"] / relevant, labels))
    return found


def reference_top_items(counts: Counter[str], share: float = 0.01) -> set[str]:
    """The reference's most recommended items: its top `share` of items (at least one)."""
    ranked = sorted(counts, key=lambda item: (-counts[item], item))
    return set(ranked[: max(1, math.ceil(share * len(ranked)))])


def recommendation_mix(
    recommended: Counter[str], reference_counts: Counter[str], catalogue_size: int | None
) -> list[Measurement]:
    """What was recommended, before any feedback: catalogue coverage (distinct items over
    `catalogue_size`, else the share of the reference's items recommended), and against the
    reference's recommendations: popularity bias (the share taken by its top 1 % of items), novelty
    (mean self-information, -log2 of an item's share of the reference's recommendations; an item the
    reference never recommended counts as recommended once there) and the Jensen-Shannon distance
    (base 2) between the two distributions of items (0 the same, 1 disjoint)."""
    counts = {item: n for item, n in recommended.items() if n > 0}
    total = sum(counts.values())
    if total <= 0:
        return []
    found = []
    if catalogue_size is not None:
        found.append(Measurement("catalogue_coverage", min(1.0, len(counts) / catalogue_size)))
    elif reference_counts:
        known = len(counts.keys() & reference_counts.keys())
        found.append(Measurement("catalogue_coverage", known / len(reference_counts)))
    reference_total = sum(reference_counts.values())
    if reference_total <= 0:
        return found
    top = reference_top_items(reference_counts)
    novelty = (
        sum(
            n * -math.log2(max(reference_counts.get(item, 0), 1) / reference_total)
            for item, n in counts.items()
        )
        / total
    )
    items = sorted(counts.keys() | reference_counts.keys())
    current = np.array([counts.get(item, 0.0) for item in items]) / total
    reference = np.array([reference_counts.get(item, 0.0) for item in items]) / reference_total
    return [
        *found,
        Measurement("popularity_bias", sum(n for item, n in counts.items() if item in top) / total),
        Measurement("novelty", novelty),
        Measurement("recommended_items_drift", float(jensenshannon(current, reference, base=2))),
    ]


MIN_SKETCH_VALUES = 30  # labelled predictions below which a target or residual drift is not measured


def sketch_drift(window: Counter[str], reference: np.ndarray) -> float | None:
    """The normed Wasserstein distance (Evidently's default drift score for numbers: the distance
    over the reference's standard deviation) between a window's `signed_index` sketch and the
    reference's values; None below MIN_SKETCH_VALUES or on a constant reference."""
    values = [(signed_value(index), n) for index, n in window.items() if n > 0]
    if sum(n for _, n in values) < MIN_SKETCH_VALUES or len(reference) < MIN_SKETCH_VALUES:
        return None
    spread = float(np.std(reference))
    if spread <= 0:
        return None
    distance = wasserstein_distance([v for v, _ in values], reference, u_weights=[n for _, n in values])
    return float(distance) / spread
