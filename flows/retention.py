"""retention: delete stored data older than its configured age, and report what went."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.retention import apply_retention, retention_markdown
from watchkeeper.settings import Settings
from watchkeeper.times import utcnow


@flow(name="retention", log_prints=True)
def retention() -> dict[str, int]:
    settings = Settings()
    config = settings.monitoring
    removed = apply_retention(settings.open_store(), config, settings.resolved_home, utcnow())
    create_markdown_artifact(
        retention_markdown(removed, config), key="retention", description="What retention removed"
    )
    print(", ".join(f"{kind}: {count}" for kind, count in removed.items()))
    return removed
