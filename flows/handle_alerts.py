"""handle-alerts: started by the outbox for each Alertmanager notification that brings news.

It works on the store, not on the notification: every alert not yet correlated is correlated, so
a run that failed, or a notification whose run has not started yet, is covered by the next run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.incidents import correlate_alerts
from watchkeeper.settings import Settings


@flow(name="handle-alerts", log_prints=True)
def handle_alerts(notification_id: int | None = None) -> dict[str, Any]:
    settings = Settings()
    outcome = correlate_alerts(settings.open_store(), settings.monitoring)
    print(
        f"notification {notification_id}: {outcome.correlated} alerts correlated; incidents opened "
        f"{outcome.opened}, updated {outcome.updated}, resolved {outcome.resolved}"
    )
    return outcome.as_json()
