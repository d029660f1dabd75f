"""Nudges: the intake tells the executors on its host that the outbox owes a run, so that one
dispatches it now rather than at its next poll of the outbox (every 0.1 s).

Each executor listens on a Unix datagram socket in the home's run folder (`outbox-<pid>.sock`); the
intake sends a byte to every socket there after the commit that owes the run. Best effort: the poll
still finds every owed row, so a nudge lost (a full buffer, an executor on another host, a home path
too long for a socket's address) only costs the poll's wait. Datagrams never block the sender.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
from pathlib import Path

log = logging.getLogger(__name__)

PATTERN = "outbox-*.sock"
MAX_ADDRESS_BYTES = 107  # sun_path's 108 bytes, with the terminating NUL


class NudgeListener:
    """An executor's socket; `wait` returns early when nudged."""

    def __init__(self, path: Path, sock: socket.socket) -> None:
        self.path = path
        self._socket = sock

    @classmethod
    def open(cls, folder: Path) -> NudgeListener | None:
        """Listen in `folder`; None (the executor then only polls) when the socket cannot be made."""
        path = folder / f"outbox-{os.getpid()}.sock"
        if len(os.fsencode(path)) > MAX_ADDRESS_BYTES:
            log.warning("no outbox nudges: %s is too long for a socket's address; polling only", path)
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # left by a process of the same PID that died
            sock.bind(os.fsencode(path))
        except OSError as exc:
            sock.close()
            log.warning("no outbox nudges (%s); polling only", exc)
            return None
        sock.setblocking(False)
        return cls(path, sock)

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True when nudged (every nudge waiting is taken)."""
        readable, _, _ = select.select([self._socket], [], [], max(0.0, timeout))
        if not readable:
            return False
        with contextlib.suppress(BlockingIOError):
            while self._socket.recv(64):
                pass
        return True

    def close(self) -> None:
        self._socket.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def nudge(folder: Path) -> int:
    """Nudge every executor listening in `folder`; returns how many were nudged. A socket nobody
    listens on any more (its executor died) is removed."""
    nudged = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in folder.glob(PATTERN):
            try:
                sock.sendto(b"!", os.fsencode(path))
                nudged += 1
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                # A full buffer (EAGAIN) means a nudge is already waiting; anything else: the poll.
    return nudged
