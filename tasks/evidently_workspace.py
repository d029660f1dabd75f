"""Drift snapshots in a local Evidently workspace, one project per model with its dashboard.

`evidently ui --workspace WATCHKEEPER_HOME/evidently` shows each model's drift over time.
"""

from __future__ import annotations

import threading
from pathlib import Path

from evidently.core.report import Snapshot
from evidently.sdk.models import PanelMetric
from evidently.sdk.panels import line_plot_panel, text_panel
from evidently.ui.workspace import Project, Workspace

from watchkeeper.config import Model

VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
# Evidently's default method depends on the window's size, so a panel may plot either kind.
STATISTIC = (
    "drift statistic: p-value up to 1,000 rows (lower = more drift), distance above (higher = more drift)"
)
# The local workspace keeps its project list in files; mapped drift tasks run in threads.
_WORKSPACE_LOCK = threading.Lock()
_OPENED: dict[str, Workspace] = {}


def _dashboard(project: Project, model: Model) -> None:
    project.dashboard.add_panel(
        text_panel(title=f"{model.name}: drift against the reference", description="Set up by Watchkeeper")
    )
    for feature in model.features:
        project.dashboard.add_panel(
            line_plot_panel(
                title=f"{feature.name} {STATISTIC}",
                values=[
                    PanelMetric(
                        legend=feature.name, metric=VALUE_DRIFT, metric_labels={"column": feature.name}
                    )
                ],
                size="half",
            )
        )
    project.dashboard.add_panel(
        line_plot_panel(
            title=f"prediction {STATISTIC}",
            values=[
                PanelMetric(
                    legend=model.prediction_column,
                    metric=VALUE_DRIFT,
                    metric_labels={"column": model.prediction_column},
                )
            ],
            size="half",
        )
    )


def model_project(workspace: Workspace, model: Model) -> Project:
    """The model's project, created with its dashboard the first time."""
    for project in workspace.list_projects():
        if project.name == model.name:
            return project
    project = workspace.create_project(
        model.name, description=f"Drift of {model.name} monitored by Watchkeeper"
    )
    _dashboard(project, model)
    return project


def _opened(path: Path, reload: bool = False) -> Workspace:
    """The workspace, opened once per process: opening one reads every snapshot it holds, which
    grows with each evaluation of each model. `reload` for what another process may have added."""
    key = str(path.resolve())
    if reload or key not in _OPENED:
        _OPENED[key] = Workspace.create(str(path))
    return _OPENED[key]


def add_drift_snapshot(path: Path, model: Model, snapshot: Snapshot, replaces: str | None = None) -> str:
    """Store the snapshot (dropping the one it replaces, for a re-evaluated window); returns its id."""
    with _WORKSPACE_LOCK:
        workspace = _opened(path)
        project = model_project(workspace, model)
        if replaces and replaces not in _run_ids(workspace, project):
            workspace = _opened(path, reload=True)  # written by another process, perhaps
            project = model_project(workspace, model)
        if replaces and replaces in _run_ids(workspace, project):
            workspace.delete_run(project.id, replaces)
        return str(workspace.add_run(project.id, snapshot).id)


def _run_ids(workspace: Workspace, project: Project) -> set[str]:
    return {str(run_id) for run_id in workspace.list_runs(project.id)}


def project_id(path: Path, model_name: str) -> str | None:
    """The id of the model's project in the workspace, for links to its snapshots; None before its
    first drift evaluation. Asked of the workspace this process opened (its project list is read
    from disk, so it shows projects other processes created): opening it again would read every
    snapshot it holds, for each model's daily report."""
    if not path.exists():
        return None
    with _WORKSPACE_LOCK:
        for project in _opened(path).list_projects():
            if project.name == model_name:
                return str(project.id)
    return None
