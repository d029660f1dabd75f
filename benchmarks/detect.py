"""Time to detect, per failure class: the fault drill (`watchkeeper drill`) on the real stack.

Every fault the demo can inject runs on a model of its own, side by side, with a clean model
beside them, through `watchkeeper up` (Prefect-scheduled flows, Prometheus with the shipped rules,
Alertmanager with the shipped routes, the webhook and handle-alerts). See watchkeeper/evaluation/drill.py.

Baseline: the seed's promise of detection under 2 minutes (120 s) for critical failures;
`ratio_to_seed_promise` = the median over the critical classes of the seconds from injection to
the first expected alert's webhook at Watchkeeper, divided by 120.

Usage: python benchmarks/detect.py [--faults a,b] [--seed N] [--inject-after S] [--rate R]
[--clean-minutes M] [--day-minutes D]; the last line is JSON (the drill's result with the ratio
added, and the anomaly rules' cost on its Prometheus). Faults start after the anomaly rules'
ten-minute warm-up; every model's traffic follows a daily cycle compressed to D minutes (120).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchkeeper.evaluation.drill import FAULTS, INJECT_AFTER_SECONDS, Drill, DrillOptions  # noqa: E402
from watchkeeper.local.stack import free_ports  # noqa: E402

SEED_PROMISE_SECONDS = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--inject-after", type=float, default=INJECT_AFTER_SECONDS)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--clean-minutes", type=float, default=30.0)
    parser.add_argument("--day-minutes", type=float, default=DrillOptions.day_minutes)
    args = parser.parse_args()
    options = DrillOptions(
        tuple(f for f in args.faults.split(",") if f),
        args.seed,
        args.inject_after,
        args.rate,
        args.clean_minutes,
        day_minutes=args.day_minutes,
    )
    home = Path(tempfile.mkdtemp(prefix="watchkeeper-detect-"))
    ports = free_ports()
    result = Drill(options, home, lambda message: print(message, flush=True)).run(ports)
    for fault, row in result["faults"].items():
        print(
            f"{fault:<20} detected={row['detected']!s:<5} to_webhook={row['seconds_to_webhook']} s",
            flush=True,
        )
    median = result["critical_median_seconds_to_webhook"]
    result["baseline"] = "seed promise: critical failures detected in under 120 s"
    result["ratio_to_seed_promise"] = None if median is None else round(median / SEED_PROMISE_SECONDS, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
