"""What each kind of model (`models[].task`) sends, and what its predictions and labels count as.

- `binary`: any class; quality is that of `positive_class` against the rest.
- `multiclass`: a class; those outside the config's `classes` count as `_other_`, so a sender
  cannot create series.
- `regression`: a number, for the prediction and for the label. A prediction is kept as its
  `repr` until its label joins it; only sums and sketches of the errors are kept.
- `ranking`: `{"items": [...], "scores": [...]}`, a ranked list (scores optional); the feedback
  `{"items": [...], "relevance": [...]}`, the items the user interacted with (relevance 1 when
  not sent). Items are kept as short hashes (`item_key`), never as label values.

Whatever the task, an `embedding` feature is an array of its configured `dim` finite numbers
(`embedding_problem`); a vector out of shape refuses its batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from watchkeeper.config import Model
from watchkeeper.intake.checks import OTHER_CLASS, class_name, is_number

BINARY, MULTICLASS, REGRESSION, RANKING = "binary", "multiclass", "regression", "ranking"
MAX_ITEM_ID = 256  # characters of an item id
ITEM_ID_TYPES = (str, int)  # a tuple: `str | int` in the check would be built at each call
MAX_FEEDBACK_ITEMS = 10_000
ITEM_SEPARATOR = ","  # between the item keys of a ranked list as its key row keeps it


def is_regression(model: Model | None) -> bool:
    return model is not None and model.task == REGRESSION


def regression_error(predicted: object, label: object) -> float | None:
    """prediction - label of a regression model's joined pair; None when either was sent while
    the model had another task (a class name): joined, and not measured."""
    try:
        return float(predicted) - float(label)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def multiclass_class(value: object, model: Model) -> str:
    """A multiclass prediction or label's class: one of the configured classes, or `_other_`."""
    name = class_name(value)
    return name if name in model.classes else OTHER_CLASS


def number_text(value: object) -> str:
    """A regression prediction as its key row keeps it until its label arrives (exact: `repr`)."""
    return repr(float(value))  # type: ignore[arg-type]


def item_key(item: object) -> str:
    """An item id as the aggregates keep it: 16 hex characters of its hash (a billion items
    collide with a probability below 3 %; two items sharing a key only merge their counts)."""
    return hashlib.blake2b(class_name(item).encode(), digest_size=8).hexdigest()


def ranked_keys(prediction: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(item_key(item) for item in prediction["items"])


def feedback_relevance(label: Mapping[str, Any]) -> dict[str, float]:
    """The feedback's items and their relevance (1 when not sent; an item sent twice keeps its
    highest)."""
    relevance = label.get("relevance") or [1.0] * len(label["items"])
    found: dict[str, float] = {}
    for item, value in zip(label["items"], relevance, strict=True):
        key = item_key(item)
        found[key] = max(found.get(key, 0.0), float(value))
    return found


def ranking_scores(
    ranked: Sequence[str], relevance: Mapping[str, float], cutoffs: Sequence[int]
) -> dict[str, float]:
    """One request's scores: per k, precision@k (hits in the top k over k), recall@k (over every
    relevant item, recommended or not), NDCG@k (linear gain, the ideal ranking over every item
    with feedback) and hit@k; the reciprocal rank of the first relevant item; and whether the
    request had any relevant item (`relevant`: what recall is averaged over)."""
    relevant = {item for item, value in relevance.items() if value > 0}
    gains = [relevance.get(item, 0.0) for item in ranked]
    ideal = sorted(relevance.values(), reverse=True)
    found = {"n": 1.0, "relevant": 1.0 if relevant else 0.0}
    first = next((rank for rank, item in enumerate(ranked, start=1) if item in relevant), None)
    found["rr"] = 1.0 / first if first else 0.0
    for k in cutoffs:
        hits = sum(1 for item in ranked[:k] if item in relevant)
        dcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains[:k]))
        idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal[:k]))
        found[f"precision@{k}"] = hits / k
        found[f"recall@{k}"] = hits / len(relevant) if relevant else 0.0
        found[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
        found[f"hit@{k}"] = 1.0 if hits else 0.0
    return found


def earns_business_value(model: Model, predicted: str, actual: str) -> bool:
    """Whether a labelled prediction's business value counts in `ai_business_impact_score`: a correct
    positive decision (binary), any correct decision (multiclass), every labelled one (regression,
    ranking)."""
    if model.task in (REGRESSION, RANKING):
        return True
    if model.task == MULTICLASS:
        return predicted == actual
    return predicted == actual == class_name(model.positive_class)


def _not_a_number(value: object) -> bool:
    return not is_number(value) or not math.isfinite(float(value))  # type: ignore[arg-type]


def _item_problem(items: object, field: str, at_most: int, at_least: int) -> tuple[str, str] | None:
    if not isinstance(items, list):
        return field, "expected a list of item ids"
    if not at_least <= len(items) <= at_most:
        return field, f"expected {at_least} to {at_most} items, got {len(items)}"
    for index, item in enumerate(items):
        if (
            isinstance(item, bool)
            or not isinstance(item, ITEM_ID_TYPES)
            or not 0 < len(str(item)) <= MAX_ITEM_ID
        ):
            return (
                f"{field}[{index}]",
                f"expected an item id (a string of 1 to {MAX_ITEM_ID} characters, or an integer)",
            )
    return None


def _numbers_problem(
    values: object, field: str, length: int, at_least: float | None
) -> tuple[str, str] | None:
    if not isinstance(values, list) or len(values) != length:
        return field, f"expected a list of {length} numbers, one per item"
    for index, value in enumerate(values):
        if _not_a_number(value) or (at_least is not None and value < at_least):
            bound = f" of at least {at_least:g}" if at_least is not None else ""
            return f"{field}[{index}]", f"expected a finite number{bound}"
    return None


def _object_problem(value: object, field: str, keys: tuple[str, str]) -> tuple[str, str] | None:
    if not isinstance(value, dict):
        return field, f'expected an object {{"{keys[0]}": [...], "{keys[1]}": [...]}}: the model ranks items'
    extra = sorted(set(value) - set(keys))
    if extra:
        return f"{field}.{extra[0]}", f"unknown field: expected {keys[0]!r} and optionally {keys[1]!r}"
    return None


def _ranked_list_problem(model: Model, prediction: object) -> tuple[str, str] | None:
    problem = _object_problem(prediction, "prediction", ("items", "scores"))
    if problem is not None:
        return problem
    items = prediction.get("items")  # type: ignore[union-attr]
    problem = _item_problem(items, "prediction.items", model.ranking.max_list_length, 1)
    if problem is None and prediction.get("scores") is not None:  # type: ignore[union-attr]
        problem = _numbers_problem(prediction["scores"], "prediction.scores", len(items), None)  # type: ignore[index, arg-type]
    return problem


def _feedback_problem(label: object) -> tuple[str, str] | None:
    problem = _object_problem(label, "label", ("items", "relevance"))
    if problem is not None:
        return problem
    items = label.get("items")  # type: ignore[union-attr]
    problem = _item_problem(items, "label.items", MAX_FEEDBACK_ITEMS, 0)
    if problem is None and label.get("relevance") is not None:  # type: ignore[union-attr]
        problem = _numbers_problem(label["relevance"], "label.relevance", len(items), 0.0)  # type: ignore[index, arg-type]
    return problem


def prediction_problem(model: Model, prediction: Any, failed: bool) -> tuple[str, str] | None:
    """(field, what was expected) when a served prediction's shape does not fit the model's task."""
    if failed or prediction is None:
        return None
    if model.task == RANKING:
        return _ranked_list_problem(model, prediction)
    if isinstance(prediction, dict):
        return (
            "prediction",
            f"expected a class or a number, not an object: {model.name} is a {model.task} model",
        )
    if model.task == REGRESSION and _not_a_number(prediction):
        return "prediction", f"expected a number: {model.name} is a regression model"
    return None


def label_problem(model: Model, label: Any) -> tuple[str, str] | None:
    """(field, what was expected) when a label's shape does not fit the model's task."""
    if model.task == RANKING:
        return _feedback_problem(label)
    if isinstance(label, dict):
        return "label", f"expected a class or a number, not an object: {model.name} is a {model.task} model"
    if model.task == REGRESSION and _not_a_number(label):
        return "label", f"expected a number: {model.name} is a regression model"
    return None


def embedding_problem(name: str, dim: int, vector: object) -> tuple[str, str] | None:
    """(field, what was expected) when an embedding feature's value is not `dim` finite numbers;
    a null or absent one is data quality's to count, not the batch's to refuse."""
    field = f"features.{name}"
    if vector is None:
        return None
    if not isinstance(vector, list):
        return field, f"expected an array of {dim} numbers (an embedding)"
    if len(vector) != dim:
        return field, f"expected an array of {dim} numbers (the embedding's dim), got {len(vector)}"
    for index, value in enumerate(vector):
        if _not_a_number(value):
            return f"{field}[{index}]", "expected a finite number"
    return None


def embeddings_problem(model: Model, features: Mapping[str, Any]) -> tuple[str, str] | None:
    for name, dim in model.embeddings.items():
        problem = embedding_problem(name, dim, features.get(name))
        if problem is not None:
            return problem
    return None
