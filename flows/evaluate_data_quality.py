"""evaluate-data-quality: each dataset's recent records checked against its model's reference."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from tasks.drift import load_reference
from tasks.metrics import Window
from tasks.quality import evaluate_dataset
from watchkeeper.settings import Settings
from watchkeeper.store.samples import Sampling
from watchkeeper.times import utcnow


@flow(name="evaluate-data-quality", log_prints=True)
def evaluate_data_quality(datasets: list[str] | None = None) -> dict[str, dict[str, float]]:
    settings = Settings()
    config = settings.monitoring
    store = settings.open_store()
    end = utcnow()
    summary: dict[str, dict[str, float]] = {}
    for model in config.models:
        wanted = [d for d in config.datasets_of(model.name) if not datasets or d.name in datasets]
        if not wanted or model.reference is None:
            continue
        reference = load_reference(store, model, Sampling.of(config))
        for dataset in wanted:
            if reference.empty:
                print(f"{dataset.name}: {model.name}'s reference has no rows yet; nothing to check against")
                continue
            window = Window(end - model.windows.data_quality, end)
            result = evaluate_dataset(
                store, dataset, model, window, reference, Sampling.of(config), flow_run.id
            )
            summary[dataset.name] = {"score": result.score, "rows": result.rows}
            print(f"{dataset.name}: quality score {result.score:.3f} over {result.rows} rows")
    return summary
