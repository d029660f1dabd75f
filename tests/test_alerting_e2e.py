"""Bad labels in, ModelAccuracyCritical out: real Prometheus, real Alertmanager, real webhook delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.metrics import Window
from tests.conftest import LiveService
from tests.realstack import (
    AlertingStack,
    WebhookRecorder,
    collect_quality,
    post_labelled_predictions,
    wait_until,
)
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.store import Store

pytestmark = pytest.mark.stack
# The shipped rule holds for 2 minutes before firing; the stack adds scrape, evaluation and grouping.
FIRING_TIMEOUT = 240
RESOLVED_TIMEOUT = 120


def test_degraded_model_fires_then_resolves(
    tmp_path: Path, example_config: WatchkeeperConfig, store: Store
) -> None:
    model = example_config.models[0]
    recorder = WebhookRecorder()
    with LiveService(example_config, store) as service:
        stack = AlertingStack(tmp_path, service.url, recorder.url, token="e2e-token")
        try:
            stack.wait_ready()
            start = datetime.now(UTC) - timedelta(minutes=10)
            post_labelled_predictions(service.url, model.name, start, 400, correct=False, tag="bad")
            assert collect_quality(store, model, Window(start, start + timedelta(minutes=1))) == 0.0

            [(_, firing)] = wait_until(
                lambda: recorder.alerts("ModelAccuracyCritical", "firing"),
                "the firing webhook",
                FIRING_TIMEOUT,
            )
            assert firing["labels"] == {
                "alertname": "ModelAccuracyCritical",
                "severity": "critical",
                "team": "ml_engineering",
                "service": "model-inference",
                "model_name": model.name,
                "model_version": "v1",
                "instance": service.url.removeprefix("http://"),
                "job": "watchkeeper",
            }
            assert firing["annotations"]["description"] == (
                f"Model {model.name} version v1 accuracy is 0.000, "
                "below critical threshold of 0.75 (or its configured one)"
            )
            assert firing["annotations"]["runbook_url"].endswith("/runbooks/model-accuracy-critical")
            assert set(recorder.authorization) == {"Bearer e2e-token"}

            restored = datetime.now(UTC) - timedelta(minutes=1)
            post_labelled_predictions(service.url, model.name, restored, 400, correct=True, tag="good")
            assert collect_quality(store, model, Window(restored, restored + timedelta(seconds=30))) == 1.0
            wait_until(
                lambda: recorder.alerts("ModelAccuracyCritical", "resolved"),
                "the resolved webhook",
                RESOLVED_TIMEOUT,
            )
        finally:
            stack.stop()
            recorder.stop()
