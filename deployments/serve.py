"""Serve Watchkeeper's flows as Prefect deployments, with schedules from the configuration.

Run by `watchkeeper up` as `python -m deployments.serve`; set PREFECT_RUNNER_POLL_FREQUENCY=1
so that triggered runs start within about two seconds.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.collect_model_metrics import collect_model_metrics
from watchkeeper.settings import Settings

DEPLOYMENT_NAMES = ("collect-model-metrics",)


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    schedules = settings.monitoring.schedules
    return [
        collect_model_metrics.to_deployment(
            name="collect-model-metrics",
            interval=schedules.collect_model_metrics,
            concurrency_limit=1,
            description="Traffic, errors, latency and label-gated quality per model version.",
            tags=["watchkeeper", "scheduled"],
        ),
    ]


def main() -> None:
    settings = Settings()
    settings.open_store().upgrade()
    serve(*build_deployments(settings), print_starting_message=True)


if __name__ == "__main__":
    main()
