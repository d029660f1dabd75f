"""Group commit: intake batches that arrive while one is being written are written together next.

Fifty model services each posting a small batch a second cost one transaction each: a write turn
on SQLite, a round of statements on PostgreSQL, and aggregate rows per batch rather than per
group. Here one writer per kind of record takes every batch waiting (up to `GROUP_RECORDS`
records) into one transaction, and answers each POST as if its batch had been stored alone. A
quiet service writes each batch at once: nothing waits for a group to fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from watchkeeper.store import Store
from watchkeeper.store.intake import BatchWriter, StoredBatch

# Records in one transaction at most (a larger batch still goes alone, whole). A group holds
# SQLite's write turn while it is written (about 0.1 ms a record), and each write of a flow acting
# on an alert may wait for one: 500 records hold it about 50 ms. A transaction's own cost is small
# beside its records' (a dozen statements), so smaller groups cost little.
GROUP_RECORDS = 500


class GroupCommit:
    """One writer of one kind of record in one service process."""

    def __init__(
        self, store: Store, writer: BatchWriter, limiter: Callable[[], anyio.CapacityLimiter]
    ) -> None:
        self._store, self._writer, self._limiter = store, writer, limiter
        self._waiting: list[tuple[Sequence[Any], asyncio.Future[StoredBatch]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def store(self, records: Sequence[Any]) -> StoredBatch:
        """The batch's answer once it is stored (or the store's error). A POST whose client went away
        is still stored: its records were accepted, and a re-send counts them once."""
        future: asyncio.Future[StoredBatch] = asyncio.get_running_loop().create_future()
        self._waiting.append((records, future))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_waiting())
        return await asyncio.shield(future)

    async def _write_waiting(self) -> None:
        try:
            while self._waiting:
                group = self._next_group()
                await self._write(group)
        finally:
            self._writing = None

    def _next_group(self) -> list[tuple[Sequence[Any], asyncio.Future[StoredBatch]]]:
        taken, records = 0, 0
        for batch, _ in self._waiting:
            if taken and records + len(batch) > GROUP_RECORDS:
                break
            taken, records = taken + 1, records + len(batch)
        group, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return group

    async def _write(self, group: list[tuple[Sequence[Any], asyncio.Future[StoredBatch]]]) -> None:
        batches = [batch for batch, _ in group]
        try:
            answers = await anyio.to_thread.run_sync(
                self._writer.store, self._store, batches, limiter=self._limiter()
            )
        except Exception as exc:
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            # One batch's fault must not fail the others: each is written alone.
            for one in group:
                await self._write([one])
            return
        for (_, future), answer in zip(group, answers, strict=True):
            future.set_result(answer)
