"""`watchkeeper up` is all or nothing: a component that does not come up stops the ones it started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from watchkeeper.local.stack import Component, Stack
from watchkeeper.runtime.host import free_port
from watchkeeper.settings import Settings


class TwoComponents(Stack):
    """A component that comes up, then one that exits during its start-up."""

    def components(self) -> list[Component]:
        return [
            Component(
                "sleeper",
                [sys.executable, "-c", "import time; time.sleep(600)"],
                None,
                {},
                readiness="started",
            ),
            Component(
                "broken",
                [sys.executable, "-c", "raise SystemExit(3)"],
                f"http://127.0.0.1:{free_port()}/healthz",
                {},
            ),
        ]

    def render_configs(self) -> None:
        """None of the real stack's."""


def test_a_component_that_does_not_come_up_stops_the_ones_started_before_it(tmp_path: Path) -> None:
    stack = TwoComponents(Settings(home=tmp_path))
    said: list[tuple[str, str]] = []

    with pytest.raises(RuntimeError, match="broken exited during start-up"):
        stack.up(lambda name, what: said.append((name, what)))

    sleeper = next(what for name, what in said if name == "sleeper" and what.startswith("started"))
    pid = int(sleeper.removeprefix("started (pid ").rstrip(")"))
    assert ("sleeper", "stopped: the stack did not come up") in said
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not list(stack.settings.run_dir.glob("*.json"))
