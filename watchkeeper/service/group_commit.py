"""Group commit: intake batches that arrive while one is being written are written together next.

Fifty model services each posting a small batch a second cost one transaction each: a write turn
on SQLite, a round of statements on PostgreSQL, and aggregate rows per batch rather than per
group. Here one writer per kind of record takes every batch waiting (up to `GROUP_RECORDS`
records) into one transaction, and answers each POST as if its batch had been stored alone. A
quiet service writes each batch at once: nothing waits for a group to fill.

A writer may go `after` another: the labels' writer writes a group only once every batch of
predictions that reached the service before it is written. Without that, a service behind on
predictions could store labels ahead of their predictions, and each such label takes the dearer
path (kept waiting, then joined inside its prediction's transaction, in the write turn) just when
the service can least afford it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from watchkeeper.store import Store
from watchkeeper.store.intake import BatchWriter, StoredBatch

# Records in one transaction at most (a larger batch still goes alone, whole). A group holds
# SQLite's write turn while it is written (about 0.1 ms a record), and each write of a flow acting
# on an alert may wait for one: 500 records hold it about 50 ms. A transaction's own cost is small
# beside its records' (a dozen statements), so smaller groups cost little.
GROUP_RECORDS = 500


@dataclass(frozen=True)
class Posted:
    """A batch waiting for its transaction, and when it reached the writer."""

    records: Sequence[Any]
    answer: asyncio.Future[StoredBatch]
    arrived: float


class GroupCommit:
    """One writer of one kind of record in one service process (`after`: see the module)."""

    def __init__(
        self,
        store: Store,
        writer: BatchWriter,
        limiter: Callable[[], anyio.CapacityLimiter],
        after: GroupCommit | None = None,
    ) -> None:
        self._store, self._writer, self._limiter, self._after = store, writer, limiter, after
        self._waiting: list[Posted] = []
        self._in_transaction: list[Posted] = []
        self._writing: asyncio.Task[None] | None = None
        self._progress: list[asyncio.Future[None]] = []  # `written_before`'s waits

    async def store(self, records: Sequence[Any]) -> StoredBatch:
        """The batch's answer once it is stored (or the store's error). A POST whose client went away
        is still stored: its records were accepted, and a re-send counts them once."""
        future: asyncio.Future[StoredBatch] = asyncio.get_running_loop().create_future()
        self._waiting.append(Posted(records, future, time.monotonic()))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_waiting())
        return await asyncio.shield(future)

    async def written_before(self, moment: float) -> None:
        """Until every batch that reached this writer before `moment` is written (or failed)."""
        while self._oldest_unwritten() < moment:
            progress = asyncio.get_running_loop().create_future()
            self._progress.append(progress)
            await progress

    def _oldest_unwritten(self) -> float:
        """Batches are written in the order they reached the writer: the oldest not yet written is
        the group in its transaction's first, else the first waiting."""
        first = self._in_transaction[:1] or self._waiting[:1]
        return first[0].arrived if first else math.inf

    async def _write_waiting(self) -> None:
        try:
            while self._waiting:
                group = self._in_transaction = self._next_group()
                try:
                    if self._after is not None:
                        await self._after.written_before(group[-1].arrived)
                    await self._write(group)
                finally:
                    self._in_transaction = []
                    self._tell_progress()
        finally:
            self._writing = None

    def _tell_progress(self) -> None:
        waits, self._progress = self._progress, []
        for wait in waits:
            if not wait.done():  # cancelled: the service is stopping
                wait.set_result(None)

    def _next_group(self) -> list[Posted]:
        taken, records = 0, 0
        for posted in self._waiting:
            if taken and records + len(posted.records) > GROUP_RECORDS:
                break
            taken, records = taken + 1, records + len(posted.records)
        group, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return group

    async def _write(self, group: list[Posted]) -> None:
        batches = [posted.records for posted in group]
        try:
            answers = await anyio.to_thread.run_sync(
                self._writer.store, self._store, batches, limiter=self._limiter()
            )
        except Exception as exc:
            if len(group) == 1:
                group[0].answer.set_exception(exc)
                return
            # One batch's fault must not fail the others: each is written alone.
            for one in group:
                await self._write([one])
            return
        for posted, answer in zip(group, answers, strict=True):
            posted.answer.set_result(answer)
