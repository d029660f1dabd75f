"""The Evidently workspace's project lookups: the daily report asks for each model's project, and
opening the workspace reads every snapshot it holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from evidently.ui.workspace import Workspace

from tasks import evidently_workspace
from tasks.evidently_workspace import project_id


def test_projects_are_found_in_the_workspace_opened_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "evidently"
    first = Workspace.create(str(path)).create_project("credit_approval")
    opened: list[str] = []
    real_create = Workspace.create

    def counted(location: str) -> Workspace:
        opened.append(location)
        return real_create(location)

    monkeypatch.setattr(evidently_workspace.Workspace, "create", staticmethod(counted))

    assert project_id(path, "credit_approval") == str(first.id)
    assert project_id(path, "credit_approval") == str(first.id)
    # Created by another process after this one opened the workspace.
    second = real_create(str(path)).create_project("fraud_detector")
    assert project_id(path, "fraud_detector") == str(second.id)
    assert project_id(path, "never_evaluated") is None
    assert project_id(path, "never_evaluated") is None
    assert opened == [str(path)]
    assert project_id(tmp_path / "absent", "credit_approval") is None
