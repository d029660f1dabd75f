"""backfill-drift (ad hoc): drift of every window in a range, replacing earlier results for those windows."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.drift import evaluate_drift_window, load_reference
from tasks.metrics import Window
from watchkeeper.config import Duration
from watchkeeper.settings import Settings
from watchkeeper.store.samples import Sampling
from watchkeeper.times import UtcTime


def backfill_windows(start: datetime, end: datetime, window: Duration, step: Duration) -> list[Window]:
    """Windows of length `window` starting every `step` from `start`, each ending by `end`."""
    if window.total_seconds() <= 0 or step.total_seconds() <= 0:
        raise ValueError("window and step must be positive durations")
    if end <= start:
        raise ValueError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    windows, cursor = [], start
    while cursor + window <= end:
        windows.append(Window(cursor, cursor + window))
        cursor += step
    return windows


@flow(name="backfill-drift", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def backfill_drift(
    model: str, start: UtcTime, end: UtcTime, window: Duration, step: Duration
) -> dict[str, object]:
    settings = Settings()
    configured = settings.monitoring.model(model)
    if configured is None:
        raise ValueError(f"model: {model!r} is not a configured model")
    windows = backfill_windows(start, end, window, step)
    store = settings.open_store()
    sampling = Sampling.of(settings.monitoring)
    reference = load_reference(store, configured, sampling)
    progress = create_progress_artifact(0.0, description=f"Drift backfill of {model}: {len(windows)} windows")
    futures = evaluate_drift_window.map(
        unmapped(store),
        unmapped(configured),
        windows,
        unmapped(reference),
        unmapped(settings.resolved_home),
        unmapped(sampling),
        unmapped(flow_run.id),
    )
    outcomes = []
    for done, future in enumerate(as_completed(futures), start=1):
        outcomes.append(future.result())
        update_progress_artifact(progress, 100.0 * done / len(windows))
    evaluated = [o for o in outcomes if o.status == "evaluated"]
    print(f"{model}: {len(evaluated)} of {len(windows)} windows evaluated")
    return {
        "model": model,
        "windows": len(windows),
        "evaluated": len(evaluated),
        "drifted_features_by_window": {
            o.window_start: sorted(o.drifted)
            for o in sorted(evaluated, key=lambda o: o.window_start)
            if o.drifted
        },
        "skipped": sorted(o.window_start for o in outcomes if o.status != "evaluated"),
    }
