"""What the warm executor may do to a flow run it executes in a thread: stop it, and lend its slot.

A run executed in place cannot be stopped with a signal as a process can. The executor stops it by
raising `RunCancelled` inside its thread (`PyThreadState_SetAsyncExc`, the mechanism Prefect itself
uses for timeouts in threads). The exception lands at the next Python instruction, so it cannot
interrupt a call already under way in C, and it must never land between claiming a remediation
action and recording what its target answered: code that must finish once begun runs inside
`uninterruptible()`, and a cancellation asked for meanwhile is raised when that section ends.

A run that waits for people (an approval pause) lends its lane slot for the wait
(`waiting_for_people()`), so that paused runs do not keep other runs from starting.

Outside the executor (a test, `watchkeeper run`, a process-started run) both are no-ops.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from prefect.exceptions import Abort


class RunCancelled(Abort):
    """Raised in a run's thread when its cancellation was asked for. A subclass of Prefect's `Abort`,
    so that the engine neither fails nor crashes the run: the executor then moves it from
    `Cancelling` to `Cancelled`."""


@dataclass
class RunControl:
    """One executing run: its thread, whether a cancellation was asked for, and its lane slot."""

    thread_id: int
    lend_slot: Callable[[], None] = lambda: None
    take_slot_back: Callable[[], None] = lambda: None
    cancel_requested: bool = False
    shielded: int = 0
    done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> bool:
        """Ask the run to stop: at once, or when its uninterruptible section ends. True if this
        call delivered the exception now."""
        with self._lock:
            if self.cancel_requested or self.done:
                return False
            self.cancel_requested = True
            if self.shielded:
                return False
            _raise_in_thread(self.thread_id)
            return True

    def finish(self) -> None:
        """The run's thread is done with the flow: nothing is delivered from now on, and an
        exception sent a moment ago that has not landed yet is withdrawn."""
        with self._lock:
            self.done = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)

    @contextmanager
    def shield(self) -> Iterator[None]:
        with self._lock:
            self.shielded += 1
        try:
            yield
        finally:
            with self._lock:
                self.shielded -= 1
                deliver = self.cancel_requested and not self.shielded
            if deliver:
                raise RunCancelled("cancelled while an uninterruptible section ran; stopped after it")


_current: ContextVar[RunControl | None] = ContextVar("watchkeeper_run_control", default=None)


def _raise_in_thread(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(RunCancelled))


@contextmanager
def controlled(control: RunControl) -> Iterator[RunControl]:
    """Make `control` the current run's control in this thread (the executor does this)."""
    token = _current.set(control)
    try:
        yield control
    finally:
        _current.reset(token)


@contextmanager
def uninterruptible() -> Iterator[None]:
    """A section a cancellation must not cut in two (claim, call, record)."""
    control = _current.get()
    if control is None:
        yield
        return
    with control.shield():
        yield


@contextmanager
def waiting_for_people() -> Iterator[None]:
    """A wait on people (an approval): the run's lane slot is lent to other runs meanwhile."""
    control = _current.get()
    if control is None:
        yield
        return
    control.lend_slot()
    try:
        yield
    finally:
        control.take_slot_back()
