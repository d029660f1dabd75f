"""Demo traffic of the other kinds of model, next to the credit classifier (`demo.py`):

- `RegressionTraffic`: a demand forecaster, a gradient-boosted regressor on river's synthetic
  Friedman stream (ten features in [0, 1], a target around 14 ± 5), with its drift points moved out
  of reach so that only an injection changes it. `regression_bias_at` shifts every prediction.
- `RecommendationTraffic`: a recommender *simulation* (no dataset ships one that needs no download):
  200 items in 10 categories with Zipf popularity; users from four regions, each region fond of two
  categories; the model ranks items by the click rates it learned per (region, category) on a
  training slice, times their popularity, and samples ten of them by that score. Users click an item
  with a probability set by their region's taste and its place in the list; a click is a purchase
  one time in five (relevance 3, a click 1), and one request in ten also reports an item found
  elsewhere. `ranking_collapse_at` makes the model rank by a stale, shuffled table (relevant items
  sink); `popularity_shift_at` makes it answer the ten most popular items to everyone. Each
  request carries the user's search `query` (two to four words of the categories the region likes,
  one time in four of any category: a text feature) and its `query_embedding`, the query encoded
  into 8 numbers (a fixed projection of its words' categories, plus noise: an embedding feature).
  `embedding_drift_at` swaps the encoder for a new version: same length, another space, the same
  queries.

Both follow `DemoTraffic`'s interface (`next_batch`, the record builders, `reference`,
`injected_at`, `rate_factor`), so `run_demo_traffic` and the drill run them alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from river.datasets import synth
from sklearn.ensemble import HistGradientBoostingRegressor

from watchkeeper.intake.kinds import RANKING, REGRESSION
from watchkeeper.local.demo import MEDIAN_LATENCY_SECONDS

REGRESSION_FEATURES = tuple(f"x{i}" for i in range(10))
NO_DRIFT = (10**9, 2 * 10**9, 3 * 10**9)  # FriedmanDrift's drift points, beyond any demo's reach
ITEMS, CATEGORIES, LIST_LENGTH = 200, 10, 10
REGIONS = ("north", "south", "east", "west")
FAVOURITES = {"north": (0, 3), "south": (1, 4), "east": (2, 7), "west": (5, 8)}
CATEGORY_WORDS = (
    ("coat", "jacket", "wool", "parka"),
    ("sandal", "sneaker", "boot", "heel"),
    ("lamp", "sofa", "rug", "cushion"),
    ("tent", "kayak", "compass", "lantern"),
    ("novel", "atlas", "poetry", "comic"),
    ("blender", "kettle", "skillet", "whisk"),
    ("drone", "tablet", "headphones", "charger"),
    ("puzzle", "kite", "marbles", "yoyo"),
    ("serum", "lotion", "shampoo", "perfume"),
    ("leash", "collar", "aquarium", "catnip"),
)
QUALIFIERS = ("cheap", "warm", "red", "small", "best", "new", "gift", "for kids")
EMBEDDING_DIM = 8


@dataclass(frozen=True)
class KindInjections:
    """Failures of the regression and recommendation demos (positions after training)."""

    regression_bias_at: int | None = None
    regression_bias: float = 4.0
    ranking_collapse_at: int | None = None
    popularity_shift_at: int | None = None
    embedding_drift_at: int | None = None
    latency_spike_at: int | None = None
    latency_factor: float = 20.0

    @property
    def first_position(self) -> int | None:
        starts = [
            self.regression_bias_at,
            self.ranking_collapse_at,
            self.popularity_shift_at,
            self.embedding_drift_at,
            self.latency_spike_at,
        ]
        return min((s for s in starts if s is not None), default=None)

    @staticmethod
    def during(start: int | None, position: int) -> bool:
        return start is not None and position >= start


@dataclass(frozen=True)
class KindEvent:
    position: int
    request_id: str
    features: dict[str, Any]
    prediction: Any
    latency_seconds: float
    label: Any
    business_value: float


class _Traffic:
    """What both demos share: positions, latency, the injection's time, the record builders."""

    def __init__(self, model_name: str, model_version: str, seed: int, injections: KindInjections) -> None:
        self.model_name, self.model_version, self.seed = model_name, model_version, seed
        self.injections = injections
        self.rng = np.random.default_rng(seed)
        self.position = 0
        self.injected_at: datetime | None = None

    def rate_factor(self) -> float:
        return 1.0

    def _advance(self, size: int) -> list[int]:
        positions = list(range(self.position, self.position + size))
        self.position += size
        start = self.injections.first_position
        if self.injected_at is None and start is not None and self.position > start:
            self.injected_at = datetime.now(UTC)
        return positions

    def _latency(self, position: int) -> float:
        latency = float(self.rng.lognormal(np.log(MEDIAN_LATENCY_SECONDS), 0.35))
        if self.injections.during(self.injections.latency_spike_at, position):
            latency *= self.injections.latency_factor
        return round(latency, 6)

    def prediction_record(self, event: KindEvent, timestamp: datetime) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "request_id": event.request_id,
            "timestamp": timestamp,
            "features": event.features,
            "prediction": event.prediction,
            "latency_seconds": event.latency_seconds,
        }

    def feedback_record(self, event: KindEvent, timestamp: datetime) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "request_id": event.request_id,
            "label": event.label,
            "business_value": event.business_value,
            "timestamp": timestamp,
        }

    def pipeline_run_record(
        self, pipeline: str, events: list[KindEvent], timestamp: datetime
    ) -> dict[str, Any]:
        return {
            "pipeline_name": pipeline,
            "run_id": f"{self.model_name}-{self.seed}-{events[0].position}",
            "stage": "features",
            "started_at": timestamp.isoformat(),
            "duration_seconds": round(float(self.rng.lognormal(np.log(0.002 * len(events)), 0.3)), 6),
            "records": len(events),
            "errors": 0,
        }


class RegressionTraffic(_Traffic):
    def __init__(
        self,
        model_name: str = "demand_forecast",
        model_version: str = "v1",
        train_size: int = 5000,
        seed: int = 7,
        injections: KindInjections = KindInjections(),
        reference_size: int = 0,
    ) -> None:
        super().__init__(model_name, model_version, seed, injections)
        self.stream = iter(synth.FriedmanDrift(position=NO_DRIFT, transition_window=1, seed=seed))
        x, y = self._rows(train_size)
        self.regressor = HistGradientBoostingRegressor(random_state=seed).fit(x, y)
        self.reference = self._held_back(reference_size)

    def _rows(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        rows = [next(self.stream) for _ in range(size)]
        return np.array([[r[0][i] for i in range(10)] for r in rows]), np.array([r[1] for r in rows])

    def _held_back(self, size: int) -> pd.DataFrame:
        if size == 0:
            return pd.DataFrame()
        x, y = self._rows(size)
        frame = pd.DataFrame(x, columns=list(REGRESSION_FEATURES))
        frame["prediction"] = self.regressor.predict(x).round(4)
        frame["label"] = y.round(4)
        return frame

    def next_batch(self, size: int) -> list[KindEvent]:
        x, y = self._rows(size)
        predicted = self.regressor.predict(x)
        events = []
        for position, row, forecast, actual in zip(self._advance(size), x, predicted, y, strict=True):
            if self.injections.during(self.injections.regression_bias_at, position):
                forecast += self.injections.regression_bias
            events.append(
                KindEvent(
                    position=position,
                    request_id=f"{self.model_name}-{self.seed}-{position}",
                    features={f: round(float(v), 6) for f, v in zip(REGRESSION_FEATURES, row, strict=True)},
                    prediction=round(float(forecast), 4),
                    latency_seconds=self._latency(position),
                    label=round(float(actual), 4),
                    business_value=round(float(actual), 4),  # units sold
                )
            )
        return events


class RecommendationTraffic(_Traffic):
    def __init__(
        self,
        model_name: str = "product_recommendations",
        model_version: str = "v1",
        train_size: int = 5000,
        seed: int = 7,
        injections: KindInjections = KindInjections(),
        reference_size: int = 0,
    ) -> None:
        super().__init__(model_name, model_version, seed, injections)
        world = np.random.default_rng(1000 + seed)
        self.categories = np.arange(ITEMS) % CATEGORIES
        self.popularity = 1 / np.arange(1, ITEMS + 1) ** 0.8
        self.popularity /= self.popularity.max()
        self.prices = world.uniform(5, 120, ITEMS).round(2)
        self.learned = self._train(train_size)
        self.stale = world.permutation(self.learned.ravel()).reshape(self.learned.shape)
        self.encoders = (
            world.normal(size=(CATEGORIES, EMBEDDING_DIM)),
            world.normal(size=(CATEGORIES, EMBEDDING_DIM)),
        )
        self.reference = self._held_back(reference_size)

    def _taste(self, region: str) -> np.ndarray:
        """The true chance a user of the region clicks each item at the top of a list."""
        fond = np.isin(self.categories, FAVOURITES[region])
        return 0.03 + 0.3 * fond + 0.1 * self.popularity

    def _user(self, position: int) -> dict[str, Any]:
        region = REGIONS[int(self.rng.integers(len(REGIONS)))]
        categories = [
            int(self.rng.integers(CATEGORIES))
            if self.rng.random() < 0.25
            else int(self.rng.choice(FAVOURITES[region]))
            for _ in range(int(self.rng.integers(1, 4)))
        ]
        words = [CATEGORY_WORDS[c][int(self.rng.integers(4))] for c in categories]
        query = " ".join([QUALIFIERS[int(self.rng.integers(len(QUALIFIERS)))], *words])
        return {
            "region": region,
            "age": int(self.rng.integers(18, 80)),
            "sessions": int(self.rng.poisson(6)),
            "query": query,
            "query_embedding": self._encoded(categories, position),
        }

    def _encoded(self, categories: list[int], position: int) -> list[float]:
        """The query's embedding: the mean of its categories' rows of the encoder, plus noise; a
        new encoder's rows from `embedding_drift_at`."""
        drifted = self.injections.during(self.injections.embedding_drift_at, position)
        encoder = self.encoders[1 if drifted else 0]
        vector = encoder[categories].mean(axis=0) + self.rng.normal(0, 0.3, EMBEDDING_DIM)
        return [round(float(v), 4) for v in vector]

    def _train(self, size: int) -> np.ndarray:
        """Click rates per (region, category) from `size` random impressions (the model's table)."""
        shown = np.zeros((len(REGIONS), CATEGORIES))
        clicked = np.zeros((len(REGIONS), CATEGORIES))
        for _ in range(size):
            region = int(self.rng.integers(len(REGIONS)))
            item = int(self.rng.integers(ITEMS))
            shown[region, self.categories[item]] += 1
            clicked[region, self.categories[item]] += self.rng.random() < self._taste(REGIONS[region])[item]
        return (clicked + 1) / (shown + 2)

    def _ranked(self, user: dict[str, Any], position: int) -> list[int]:
        inj = self.injections
        if inj.during(inj.popularity_shift_at, position):
            return list(range(LIST_LENGTH))  # the most popular items, for everyone
        table = self.stale if inj.during(inj.ranking_collapse_at, position) else self.learned
        score = table[REGIONS.index(user["region"]), self.categories] * (0.5 + self.popularity)
        weights = score**3 / (score**3).sum()
        chosen = self.rng.choice(ITEMS, size=LIST_LENGTH, replace=False, p=weights)
        return sorted(chosen.tolist(), key=lambda item: -score[item])

    def _feedback(self, user: dict[str, Any], ranked: list[int]) -> tuple[dict[str, Any], float]:
        taste = self._taste(user["region"])
        items, relevance, value = [], [], 0.0
        for rank, item in enumerate(ranked):
            if self.rng.random() < taste[item] / np.log2(rank + 2):
                bought = self.rng.random() < 0.2
                items.append(f"item-{item}")
                relevance.append(3 if bought else 1)
                value += float(self.prices[item]) if bought else 0.0
        if self.rng.random() < 0.1:
            found = int(self.rng.choice(ITEMS, p=taste / taste.sum()))
            if f"item-{found}" not in items:
                items.append(f"item-{found}")
                relevance.append(1)
        return {"items": items, "relevance": relevance}, round(value, 2)

    def _held_back(self, size: int) -> pd.DataFrame:
        if size == 0:
            return pd.DataFrame()
        rows = []
        for _ in range(size):
            user = self._user(-1)
            ranked = self._ranked(user, -1)
            rows.append({**user, "prediction": json.dumps({"items": [f"item-{i}" for i in ranked]})})
        return pd.DataFrame(rows)

    def next_batch(self, size: int) -> list[KindEvent]:
        events = []
        for position in self._advance(size):
            user = self._user(position)
            ranked = self._ranked(user, position)
            label, value = self._feedback(user, ranked)
            events.append(
                KindEvent(
                    position=position,
                    request_id=f"{self.model_name}-{self.seed}-{position}",
                    features=user,
                    prediction={
                        "items": [f"item-{i}" for i in ranked],
                        "scores": [round(1 - r / LIST_LENGTH, 3) for r in range(LIST_LENGTH)],
                    },
                    latency_seconds=self._latency(position),
                    label=label,
                    business_value=value,
                )
            )
        return events


def demo_of(task: str) -> type[RegressionTraffic] | type[RecommendationTraffic]:
    """The demo traffic of a regression or ranking model."""
    demos = {REGRESSION: RegressionTraffic, RANKING: RecommendationTraffic}
    if task not in demos:
        raise ValueError(f"no demo traffic for a {task} model: expected one of binary, {', '.join(demos)}")
    return demos[task]
