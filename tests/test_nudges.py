"""The intake's nudge to the executors on its host that the outbox owes a run."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from watchkeeper.runtime.nudges import NudgeListener, nudge


def test_a_nudge_wakes_every_listening_executor_once(tmp_path: Path) -> None:
    listener = NudgeListener.open(tmp_path)
    assert listener is not None
    try:
        assert not listener.wait(0)
        assert nudge(tmp_path) == 1
        assert nudge(tmp_path) == 1  # two nudges before it looks: one wake-up
        assert listener.wait(30)
        assert not listener.wait(0)
    finally:
        listener.close()
    assert not listener.path.exists()
    assert nudge(tmp_path) == 0


def test_the_socket_of_an_executor_that_died_is_removed_by_the_next_nudge(tmp_path: Path) -> None:
    dead = tmp_path / "outbox-4194304.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(os.fsencode(dead))  # closed without its file removed: killed
    assert dead.exists()
    assert nudge(tmp_path) == 0
    assert not dead.exists()


def test_an_executor_whose_home_is_too_long_for_a_socket_polls_only(tmp_path: Path) -> None:
    deep = tmp_path / ("h" * 120)
    deep.mkdir()
    assert NudgeListener.open(deep) is None
    assert nudge(deep) == 0
