"""evaluate-drift: each model's latest drift window against its reference, with Evidently."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run

from tasks.drift import evaluate_drift_window, load_reference
from tasks.metrics import Window
from watchkeeper.settings import Settings
from watchkeeper.store.samples import Sampling
from watchkeeper.times import utcnow


@flow(name="evaluate-drift", log_prints=True)
def evaluate_drift(models: list[str] | None = None) -> dict[str, dict[str, object]]:
    settings = Settings()
    store = settings.open_store()
    sampling = Sampling.of(settings.monitoring)
    end = utcnow()
    summary: dict[str, dict[str, object]] = {}
    for model in settings.monitoring.models:
        if (models and model.name not in models) or model.reference is None:
            continue
        reference = load_reference(store, model, sampling)
        outcome = evaluate_drift_window(
            store,
            model,
            Window(end - model.windows.drift, end),
            reference,
            settings.resolved_home,
            sampling,
            flow_run.id,
        )
        if outcome.markdown:
            key = f"drift-{model.name}".replace("_", "-").lower()
            create_markdown_artifact(outcome.markdown, key=key, description=f"Drift of {model.name}")
            if outcome.html:
                create_link_artifact(
                    f"file://{outcome.html}", link_text="Evidently HTML report", key=f"{key}-report"
                )
        summary[model.name] = {
            "status": outcome.status,
            "share": outcome.share,
            "drifted": list(outcome.drifted),
        }
        print(f"{model.name}: {outcome.status}; drifted: {', '.join(outcome.drifted) or 'none'}")
    return summary
