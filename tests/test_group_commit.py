"""Batches waiting together are stored in one transaction, each answered as if alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select

from tests.test_store import feedback, prediction, totals
from watchkeeper.service.group_commit import GroupCommit
from watchkeeper.store import Store
from watchkeeper.store.intake import COUNT, BatchWriter, StoredBatch, feedback_writer, prediction_writer
from watchkeeper.store.schema import PredictionKey, Tally


def limiter() -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(8)


def store_all(group: GroupCommit, batches: Sequence[Sequence[Any]]) -> list[StoredBatch | BaseException]:
    """The batches posted at once, as fifty model services do."""

    async def post_all() -> list[StoredBatch | BaseException]:
        return await asyncio.gather(*(group.store(batch) for batch in batches), return_exceptions=True)

    return asyncio.run(post_all())


def transactions(store: Store) -> int:
    """Intake transactions so far: each appends one `count:predictions` row per model version."""
    with store.reading() as session:
        return session.scalar(select(func.count()).where(Tally.family == COUNT + "predictions"))


def test_batches_posted_together_share_one_transaction_and_keep_their_answers(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import watchkeeper.service.group_commit as group_commit

    monkeypatch.setattr(group_commit, "GROUP_RECORDS", 2_000)  # every batch posted fits one group
    batches = [[prediction(f"b{i}-{j}") for j in range(20)] for i in range(50)]
    batches[7] = batches[7] + [prediction("b3-0"), prediction("b7-0")]  # re-sent ids: duplicates
    batches.append(batches[0])  # a batch re-sent whole

    answers = store_all(GroupCommit(store, prediction_writer(), limiter), batches)

    assert [a.stored for a in answers] == [20] * 50 + [0]
    assert answers[7] == StoredBatch(received=22, stored=20)
    assert transactions(store) == 1
    assert totals(store)[("predictions", "credit_approval", "v1")] == 1000
    with store.reading() as session:
        assert session.scalar(select(func.count()).select_from(PredictionKey)) == 1000


def test_a_batch_that_fails_fails_alone(store: Store) -> None:
    """One batch's fault (here a writer that refuses a request id) is answered to its POST only:
    the group is written again batch by batch."""
    writer = prediction_writer()

    def refusing(records: Sequence[Any], store: Store) -> Any:
        if any(r.request_id == "poison" for r in records):
            raise ValueError("refused")
        return writer.transaction(records, store)

    group = GroupCommit(store, BatchWriter(refusing, writer.key), limiter)
    batches = [[prediction(f"b{i}")] for i in range(5)]
    batches[2] = [prediction("poison")]

    answers = store_all(group, batches)

    assert isinstance(answers[2], ValueError)
    assert [a.stored for i, a in enumerate(answers) if i != 2] == [1, 1, 1, 1]
    assert totals(store)[("predictions", "credit_approval", "v1")] == 4


def test_a_quiet_service_writes_each_batch_at_once(store: Store) -> None:
    """Nothing waits for a group to fill: one batch alone is one transaction, then the next."""
    group = GroupCommit(store, prediction_writer(), limiter)

    async def post_one_by_one() -> list[StoredBatch]:
        return [await group.store([prediction(f"r{i}")]) for i in range(3)]

    assert [a.stored for a in asyncio.run(post_one_by_one())] == [1, 1, 1]
    assert transactions(store) == 3


@pytest.mark.parametrize("records", [5, 30])
def test_a_group_holds_at_most_group_records(
    store: Store, monkeypatch: pytest.MonkeyPatch, records: int
) -> None:
    import watchkeeper.service.group_commit as group_commit

    monkeypatch.setattr(group_commit, "GROUP_RECORDS", 10)
    batches = [[prediction(f"b{i}-{j}") for j in range(records)] for i in range(4)]

    answers = store_all(GroupCommit(store, prediction_writer(), limiter), batches)

    assert [a.stored for a in answers] == [records] * 4
    assert transactions(store) == (2 if records == 5 else 4)


class Watched(GroupCommit):
    """Says when another writer first waits for it."""

    asked: asyncio.Event

    async def written_before(self, moment: float) -> None:
        self.asked.set()
        await super().written_before(moment)


@pytest.mark.parametrize("ordered", [True, False])
def test_labels_wait_for_the_predictions_that_reached_the_service_before_them(
    store: Store, ordered: bool
) -> None:
    """The predictions' transaction is held up. Labels of those predictions posted meanwhile are
    written after them and join them at once; written alone (`ordered` off, as before), they were
    kept waiting, counted under an unknown version, until their predictions' intake joined them."""
    predicted, held = prediction_writer(), threading.Event()

    def held_up(records: Sequence[Any], store: Store) -> Any:
        held.wait()
        return predicted.transaction(records, store)

    async def post() -> list[StoredBatch]:
        predictions = Watched(store, BatchWriter(held_up, predicted.key), limiter)
        predictions.asked = asyncio.Event()
        labels = GroupCommit(store, feedback_writer(), limiter, after=predictions if ordered else None)
        posted = [asyncio.ensure_future(predictions.store([prediction(f"r{i}")])) for i in range(2)]
        posted.append(asyncio.ensure_future(labels.store([feedback("r0"), feedback("r1")])))
        asked = asyncio.ensure_future(predictions.asked.wait())
        await asyncio.wait([asked, posted[2]], return_when=asyncio.FIRST_COMPLETED)
        held.set()
        answers = await asyncio.gather(*posted)
        asked.cancel()
        return answers

    answers = asyncio.run(post())

    assert [a.stored for a in answers] == [1, 1, 2]
    counted = totals(store)
    assert counted.get(("feedback", "credit_approval", "v1"), 0) == (2 if ordered else 0)
    assert counted.get(("feedback", "credit_approval", "unknown"), 0) == (0 if ordered else 2)
