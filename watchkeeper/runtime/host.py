"""This host's processes and ports: where the installed commands are, a free loopback port, whether
a process is still the one that was started (its start time), whether an HTTP endpoint answers."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on loopback now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def healthy(url: str | None, timeout: float = 2.0) -> bool:
    if url is None:
        return False
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False
