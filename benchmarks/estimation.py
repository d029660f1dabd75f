"""How close performance estimated before labels (CBPE) comes to the realised figures.

The demo's classifier on river's Agrawal stream, offline: calibrated on a labelled reference slice
it was not trained on, then scored on a stream in windows of predictions; per window the estimate
(taking every prediction as unlabelled) is compared with the realised value from the true labels.
Scenarios are the demo's: no drift, covariate drift (salary and age shift) and concept drift (the
stream switches to another labelling function), each injected after `--inject-after` predictions.
The demo's classifier is certain (its stream has no noise) and its covariate drift moves the
features after their label was drawn, so to the model it is a change of concept too; CBPE cannot
see either. A fourth scenario is the shift CBPE is built for: a noisy stream (river's
`perturbation=0.2`, the classifier uncertain near its boundaries) whose traffic moves towards the
ages where the label changes, with the labelling rule unchanged.

Baseline: the reference's realised value carried forward, which is what a monitor without an
estimate assumes until labels arrive. `ratio` is CBPE's mean absolute error over the baseline's
after the injection (below 1: the estimate helps). The last line is JSON.

    .venv/bin/python benchmarks/estimation.py [--windows 20] [--window-size 1000]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from river.datasets import synth
from sklearn.ensemble import HistGradientBoostingClassifier

from tasks.estimation import estimate_confusion, fit_calibration
from tasks.measurements import scores
from watchkeeper.local.demo import CATEGORICAL, FEATURES, DemoTraffic, Injections

Source = tuple[pd.DataFrame, Callable[[int, bool], pd.DataFrame]]

METRICS = ("accuracy", "precision", "recall", "f1")
DEMO_SCENARIOS = {
    "none": lambda _at: Injections(),
    "covariate_drift": lambda at: Injections(covariate_drift_at=at),
    "concept_drift": lambda at: Injections(concept_drift_at=at),
}
NOISE = 0.2
BOUNDARY_AGES = (40, 60)  # Agrawal's function 0 labels by age: under 40, or 60 and over


def demo_source(name: str, inject_after: int, seed: int) -> Source:
    traffic = DemoTraffic(seed=seed, injections=DEMO_SCENARIOS[name](inject_after), reference_size=2000)

    def batch(size: int, _shifted: bool) -> pd.DataFrame:
        events = traffic.next_batch(size)
        return pd.DataFrame(
            [{"score": e.score, "prediction": e.prediction, "label": e.label} for e in events]
        )

    return traffic.reference, batch


def noisy_boundary_source(seed: int) -> Source:
    """A noisy Agrawal stream; once shifted, traffic within 5 years of a boundary age is kept and
    four in five other rows are dropped (P(label | features) is unchanged)."""
    stream: Iterator = iter(synth.Agrawal(classification_function=0, seed=seed, perturbation=NOISE))
    rng = np.random.default_rng(seed)

    def rows(n: int, shifted: bool) -> pd.DataFrame:
        kept = []
        while len(kept) < n:
            features, label = next(stream)
            near = min(abs(features["age"] - a) for a in BOUNDARY_AGES) < 5
            if not shifted or near or rng.random() < 0.2:
                kept.append({**features, "label": int(label)})
        return pd.DataFrame(kept)

    train = rows(5000, False)
    model = HistGradientBoostingClassifier(
        categorical_features=[f in CATEGORICAL for f in FEATURES], random_state=seed
    ).fit(train[list(FEATURES)], train["label"])

    def scored(n: int, shifted: bool) -> pd.DataFrame:
        frame = rows(n, shifted)
        score = model.predict_proba(frame[list(FEATURES)])[:, 1]
        return pd.DataFrame(
            {"score": score, "prediction": (score >= 0.5).astype(int), "label": frame["label"]}
        )

    return scored(2000, False), scored


def realised(frame: pd.DataFrame) -> dict[str, float]:
    truth, predicted = frame["label"] == 1, frame["prediction"] == 1
    return scores(
        float((truth & predicted).sum()),
        float((~truth & predicted).sum()),
        float((~truth & ~predicted).sum()),
        float((truth & ~predicted).sum()),
    )


def run_scenario(
    source: Source, drifts: bool, windows: int, size: int, inject_after: int
) -> dict[str, object]:
    reference, batch = source
    calibration = fit_calibration(reference, "score", "label", 1)
    assert calibration is not None
    carried = realised(reference)
    rows = []
    for index in range(windows):
        after = drifts and index * size >= inject_after
        frame = batch(size, after)
        estimate = estimate_confusion(
            calibration.probability(frame["score"].to_numpy(dtype=float)),
            (frame["prediction"] == 1).to_numpy(),
        )
        assert estimate is not None
        rows.append(
            {
                "window": index,
                "after_injection": after,
                "realised": realised(frame),
                "estimated": estimate.scores(),
            }
        )
    judged = [r for r in rows if r["after_injection"]] or rows
    errors = {
        m: {
            "cbpe_mae": round(float(np.mean([abs(r["estimated"][m] - r["realised"][m]) for r in judged])), 4),
            "baseline_mae": round(float(np.mean([abs(carried[m] - r["realised"][m]) for r in judged])), 4),
        }
        for m in METRICS
    }
    for m in METRICS:
        baseline = errors[m]["baseline_mae"]
        errors[m]["ratio"] = round(errors[m]["cbpe_mae"] / baseline, 3) if baseline else None
    accuracy = [(round(r["realised"]["accuracy"], 3), round(r["estimated"]["accuracy"], 3)) for r in rows]
    return {"windows_judged": len(judged), "errors": errors, "accuracy_realised_vs_estimated": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--window-size", type=int, default=1000)
    parser.add_argument("--inject-after", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sources = {
        name: (demo_source(name, args.inject_after, args.seed), name != "none") for name in DEMO_SCENARIOS
    }
    sources["covariate_shift_noisy_stream"] = (noisy_boundary_source(args.seed), True)
    results = {}
    for name, (source, drifts) in sources.items():
        results[name] = run_scenario(source, drifts, args.windows, args.window_size, args.inject_after)
        for metric, error in results[name]["errors"].items():
            print(
                f"{name:<16} {metric:<9} CBPE MAE {error['cbpe_mae']:.4f}  "
                f"baseline MAE {error['baseline_mae']:.4f}  ratio {error['ratio']}",
                flush=True,
            )
    summary = {
        "benchmark": "estimation",
        "baseline": "reference's realised value carried forward until labels arrive",
        "window_size": args.window_size,
        "inject_after": args.inject_after,
        "ratio_accuracy": {name: r["errors"]["accuracy"]["ratio"] for name, r in results.items()},
        "cbpe_mae_accuracy": {name: r["errors"]["accuracy"]["cbpe_mae"] for name, r in results.items()},
        "scenarios": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
