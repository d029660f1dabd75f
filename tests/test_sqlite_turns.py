"""SQLite's writers take turns, and the intake's bulk transactions give way to the others: acting on
an alert in the executor waits for the one group of predictions being written, not for the next."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from watchkeeper.store import Store
from watchkeeper.store.schema import Tally

pytestmark = pytest.mark.sqlite_only("the turns are SQLite's; PostgreSQL's writers do not take turns")

URGENT_WRITER = """
import sys
from watchkeeper.store import Store
from watchkeeper.store.schema import Tally
store = Store(sys.argv[1])
with store.writing() as session:
    session.add(Tally(family="order", subject="executor", variant="", detail="", total=1))
"""


def record(store: Store, who: str, bulk: bool) -> None:
    with store.writing(bulk=bulk) as session:
        session.add(Tally(family="order", subject=who, variant="", detail="", total=1))


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a state another thread or process reaches (a hang fails the test, no timing)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.005)


def shared_lock_held(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def blocked_in(thread: threading.Thread, function: str) -> bool:
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


@contextmanager
def group_being_written(store: Store) -> Iterator[threading.Event]:
    """A bulk transaction holding the write turn until the event it yields is set."""
    holding, release = threading.Event(), threading.Event()

    def write() -> None:
        with store.writing(bulk=True):
            holding.set()
            release.wait(60)

    first = threading.Thread(target=write)
    first.start()
    assert holding.wait(60)
    try:
        yield release
    finally:
        release.set()
        first.join()


def order_of_writes(store: Store) -> list[str]:
    with store.reading() as session:
        return list(
            session.scalars(select(Tally.subject).where(Tally.family == "order").order_by(Tally.id)).all()
        )


def test_a_writer_of_another_process_goes_before_the_next_bulk_transaction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.upgrade()
    with group_being_written(store) as release:
        executor = subprocess.Popen([sys.executable, "-c", URGENT_WRITER, url], env={**os.environ})
        until(lambda: shared_lock_held(tmp_path / "store.db.writers.waiting"), "the executor waits its turn")
        next_group = threading.Thread(target=record, args=(store, "next group", True))
        next_group.start()
        until(lambda: blocked_in(next_group, "_give_way"), "the next group gives way")
        release.set()
    next_group.join()
    assert executor.wait(60) == 0
    assert order_of_writes(store) == ["executor", "next group"]
    store.dispose()


def test_writers_of_one_process_go_before_its_next_bulk_transaction(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade()
    with group_being_written(store) as release:
        alert = threading.Thread(target=record, args=(store, "alert", False))
        alert.start()
        until(lambda: blocked_in(alert, "_take_turn"), "the alert's write waits for its turn")
        next_group = threading.Thread(target=record, args=(store, "next group", True))
        next_group.start()
        until(lambda: blocked_in(next_group, "_give_way"), "the next group gives way")
        release.set()
    for thread in (alert, next_group):
        thread.join()
    assert order_of_writes(store) == ["alert", "next group"]
    store.dispose()


def test_a_writer_waiting_goes_before_a_bulk_transaction_queued_ahead_of_it(tmp_path: Path) -> None:
    """The service's bulk writers (one a kind of record) queue for the turn while a group is being
    written; the alert's write that comes after them still goes first."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.upgrade()
    with group_being_written(store) as release:
        next_group = threading.Thread(target=record, args=(store, "next group", True))
        next_group.start()
        until(lambda: blocked_in(next_group, "_take_turn"), "the next group queues for its turn")
        alert = threading.Thread(target=record, args=(store, "alert", False))
        alert.start()
        until(lambda: blocked_in(alert, "_take_turn"), "the alert's write waits for its turn")
        executor = subprocess.Popen([sys.executable, "-c", URGENT_WRITER, url], env={**os.environ})
        until(lambda: waiting_processes(tmp_path) == 2, "the executor waits its turn too")
        release.set()
    for thread in (alert, next_group):
        thread.join()
    assert executor.wait(60) == 0
    assert order_of_writes(store)[-1] == "next group"
    store.dispose()


def waiting_processes(folder: Path) -> int:
    """How many processes hold the shared `flock` of waiting writers (the kernel's lock table)."""
    inode = os.stat(folder / "store.db.writers.waiting").st_ino
    locks = Path("/proc/locks").read_text().splitlines()
    return sum(f":{inode} " in line and " READ " in line for line in locks)


def test_a_nested_transaction_keeps_its_writers_turn(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade()
    with store.writing(bulk=True):
        record(store, "nested", False)  # would wait forever for its own turn
    with store.reading() as session:
        assert session.scalars(select(Tally.subject)).all() == ["nested"]
    store.dispose()


def write_at_once(store: Store, start: threading.Barrier) -> None:
    start.wait()
    with store.writing(bulk=True):
        pass


def test_bulk_writers_starting_at_once_leave_no_lock_behind(tmp_path: Path) -> None:
    """The first writers of a fresh process open the lock files together (the service's first
    requests). Each must unlock what it locked: a leftover exclusive lock stops every later writer
    that waits its turn, for good. Before the mend, 9 fresh stores in 30 kept one."""
    for attempt in range(20):
        store = Store(f"sqlite:///{tmp_path / f'store{attempt}.db'}")
        start = threading.Barrier(8)
        writers = [threading.Thread(target=write_at_once, args=(store, start), daemon=True) for _ in range(8)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(60)
        assert not any(thread.is_alive() for thread in writers)
        assert not shared_lock_held(tmp_path / f"store{attempt}.db.writers.waiting"), f"attempt {attempt}"
        store.dispose()
