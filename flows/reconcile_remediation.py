"""reconcile-remediation: finishes, on a schedule, what handle-alerts runs that died left behind.

Incidents changed but not yet decided, decided actions nobody claimed, actions whose claimant died
mid-call (re-sent only when idempotent by construction, otherwise marked `outcome_unknown` and
reported), approvals nobody answered. Every step is a claim, so it is safe beside live runs.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from watchkeeper.remediation.reconciler import reconcile
from watchkeeper.remediation.report import report_markdown
from watchkeeper.settings import Settings
from watchkeeper.store.actions import automation_report


@flow(name="reconcile-remediation", log_prints=True)
def reconcile_remediation() -> dict[str, Any]:
    settings = Settings()
    store, config = settings.open_store(), settings.monitoring
    claimant = f"reconcile-remediation/{flow_run.id or uuid.uuid4().hex}"
    alertmanager_url = settings.alertmanager_url or config.remediation.alertmanager_url
    done = reconcile(store, config, claimant, alertmanager_url)
    print(f"reconciled: {done.as_json()}")
    if done.anything:
        create_markdown_artifact(
            key="automation-report",
            markdown=report_markdown(automation_report(store)),
            description="Remediation over the last 24 hours",
        )
    return done.as_json()
