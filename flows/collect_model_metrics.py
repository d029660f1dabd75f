"""collect-model-metrics: labels that arrived before their predictions are joined and the intake's
tallies folded; then per model, traffic over the metrics window; quality, estimated quality and
segments over the quality window, each a sum of the window's buckets."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from tasks.metrics import collect_models, compact_tallies, join_labels
from tasks.references import reference_profiles
from watchkeeper.settings import Settings
from watchkeeper.store.intake import IntakeRules
from watchkeeper.store.samples import Sampling
from watchkeeper.times import utcnow


@flow(name="collect-model-metrics", log_prints=True)
def collect_model_metrics(models: list[str] | None = None) -> dict[str, int]:
    cpu = time.thread_time()
    settings = Settings()
    config = settings.monitoring
    store = settings.open_store()
    join_labels(store, IntakeRules.of(config, reference_profiles(store, config)))
    compact_tallies(store, Sampling.of(config))
    chosen = [model for model in config.models if not models or model.name in models]
    # Quoted: not walked for futures by Prefect (fifty models' settings, about 100 ms a cycle).
    stored = collect_models(store, quote(config), quote(chosen), utcnow(), flow_run.id)
    # What monitoring costs: this thread's CPU (the warm executor runs each flow in a thread of its own).
    get_run_logger().info(
        "collection cycle: %.4f s CPU for %d models", time.thread_time() - cpu, max(1, len(stored))
    )
    return stored
