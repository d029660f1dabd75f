"""How close a regression model's MAE estimated before labels (DLE) comes to the realised MAE.

Offline, as `benchmarks/estimation.py` measures CBPE: a gradient-boosted regressor on Friedman #1
(the function river's FriedmanDrift serves before its drift points: y = 10 sin(pi x0 x1) +
20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + N(0, 1), ten features in [0, 1]) is trained on data where x3 stayed
below 0.7, as a model trained on last year's traffic; its labelled reference covers the whole
range, and the loss model (`watchkeeper/intake/loss.py`, as the intake fits it) learns there where
the regressor errs. The stream is scored in windows; per window the estimate (every prediction
taken as unlabelled) is compared with the realised MAE from the labels. Scenarios, each injected
after `--inject-after` predictions:

- `none`: inputs as the reference's;
- `covariate_shift` (DLE's assumption holds: the labelling rule stays): traffic moves to x3 above
  0.7, where the regressor never trained and errs more;
- `concept_shift` (it does not): every label 5 higher with the same inputs, a world that moved
  (prices, demand) which only the labels show.

Baseline: the reference's realised MAE carried forward, what a monitor without an estimate assumes
until labels arrive. `ratio` is DLE's mean absolute error over the baseline's after the injection
(below 1: the estimate helps). The last line is JSON.

    .venv/bin/python benchmarks/loss_estimation.py [--windows 20] [--window-size 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchkeeper.config import Model  # noqa: E402
from watchkeeper.intake.loss import fit_loss_model  # noqa: E402

FEATURES = [f"x{i}" for i in range(10)]
TRAINED_BELOW = 0.7  # x3 of the training data
CONCEPT_SHIFT = 5.0


def friedman(rng: np.random.Generator, size: int, x3_low: float = 0.0, x3_high: float = 1.0) -> tuple:
    x = rng.uniform(0, 1, (size, 10))
    x[:, 3] = rng.uniform(x3_low, x3_high, size)
    y = (
        10 * np.sin(np.pi * x[:, 0] * x[:, 1])
        + 20 * (x[:, 2] - 0.5) ** 2
        + 10 * x[:, 3]
        + 5 * x[:, 4]
        + rng.normal(0, 1, size)
    )
    return x, y


def run(scenario: str, windows: int, size: int, inject_after: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x_train, y_train = friedman(rng, 5000, x3_high=TRAINED_BELOW)
    regressor = HistGradientBoostingRegressor(random_state=seed).fit(x_train, y_train)
    x_ref, y_ref = friedman(rng, 2000)
    reference = pd.DataFrame(x_ref, columns=FEATURES).assign(prediction=regressor.predict(x_ref), label=y_ref)
    model = Model.model_validate(
        {
            "name": "demand",
            "version": "v1",
            "task": "regression",
            "features": [{"name": f, "type": "numerical"} for f in FEATURES],
        }
    )
    loss = fit_loss_model(model, reference)
    assert loss is not None
    baseline = float(np.mean(np.abs(reference["label"] - reference["prediction"])))
    rows = []
    for window in range(windows):
        shifted = window * size >= inject_after and scenario != "none"
        low = TRAINED_BELOW if shifted and scenario == "covariate_shift" else 0.0
        x, y = friedman(rng, size, x3_low=low)
        if shifted and scenario == "concept_shift":
            y = y + CONCEPT_SHIFT
        predicted = regressor.predict(x)
        features = pd.DataFrame(x, columns=FEATURES).to_dict("records")
        estimate = float(np.mean(loss.expected(features, list(predicted))))
        rows.append(
            {"shifted": shifted, "realised": float(np.mean(np.abs(y - predicted))), "estimate": estimate}
        )
    after = [r for r in rows if r["shifted"]] or rows
    dle = float(np.mean([abs(r["estimate"] - r["realised"]) for r in after]))
    carried = float(np.mean([abs(baseline - r["realised"]) for r in after]))
    return {
        "scenario": scenario,
        "reference_mae": round(baseline, 3),
        "realised_mae_after": round(float(np.mean([r["realised"] for r in after])), 3),
        "estimated_mae_after": round(float(np.mean([r["estimate"] for r in after])), 3),
        "dle_abs_error": round(dle, 3),
        "baseline_abs_error": round(carried, 3),
        "ratio": round(dle / carried, 3) if carried else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--window-size", type=int, default=1000)
    parser.add_argument("--inject-after", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    results = [
        run(scenario, args.windows, args.window_size, args.inject_after, args.seed)
        for scenario in ("none", "covariate_shift", "concept_shift")
    ]
    for r in results:
        print(
            f"{r['scenario']:<16} realised {r['realised_mae_after']:.3f}  "
            f"DLE {r['estimated_mae_after']:.3f}  "
            f"reference {r['reference_mae']:.3f}  |DLE - realised| {r['dle_abs_error']:.3f}  "
            f"|reference - realised| {r['baseline_abs_error']:.3f}  ratio {r['ratio']}",
            flush=True,
        )
    print(json.dumps({"baseline": "the reference's realised MAE carried forward", "scenarios": results}))


if __name__ == "__main__":
    main()
