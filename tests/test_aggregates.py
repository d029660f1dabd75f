"""The aggregates the intake keeps as records arrive: counted once whatever the order, the retries,
the raw-row setting or the folds, and what windows sum to."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sqlalchemy import bindparam, func, select, text, update

from tasks.logs import prediction_frame
from tasks.measurements import Window
from tasks.metrics import bucket_window, measure_quality, measure_traffic
from tests.conftest import store_feedback, store_predictions
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.intake.aggregates import (
    BottomK,
    bucket_start,
    in_sample,
    latency_at,
    latency_index,
    request_key,
    request_priority,
)
from watchkeeper.intake.records import FeedbackRecord, PredictionRecord
from watchkeeper.store import Store
from watchkeeper.store.buckets import fold_model_tallies, window_totals
from watchkeeper.store.intake import IntakeRules, feedback_writer, join_waiting_labels
from watchkeeper.store.samples import Sampling, trim_samples
from watchkeeper.store.schema import (
    Feedback,
    Prediction,
    PredictionKey,
    PredictionSample,
    UTCDateTime,
    WaitingLabel,
)
from watchkeeper.times import utcnow

END = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
MODEL = "credit_approval"


def predictions(ids: range, minutes_ago: float = 1.0) -> list[PredictionRecord]:
    return [
        PredictionRecord(
            model_name=MODEL,
            model_version="v1",
            request_id=f"r{i}",
            timestamp=(END - timedelta(minutes=minutes_ago)).isoformat(),
            features={"salary": 1.0},
            prediction=i % 2,
            score=0.9 if i % 2 else 0.1,
            latency_seconds=0.01 * (1 + i % 7),
        )
        for i in ids
    ]


def labels(ids: range) -> list[FeedbackRecord]:
    return [FeedbackRecord(model_name=MODEL, request_id=f"r{i}", label=1, business_value=10.0) for i in ids]


def quality(store: Store, config: WatchkeeperConfig) -> dict[str, float]:
    window = bucket_window(END, timedelta(minutes=30), 60)
    found = measure_quality(store, config.models[0], window)["model_quality"]["v1"]
    return {m.metric: m.value for m in found if not m.labels}


def rows(store: Store, entity: type) -> int:
    with store.reading() as session:
        return session.scalar(select(func.count()).select_from(entity)) or 0


def test_a_label_before_its_prediction_waits_and_counts_once_when_the_prediction_arrives(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    early = store_feedback(store, labels(range(10)))
    assert (early.stored, rows(store, WaitingLabel)) == (10, 10)
    assert store_feedback(store, labels(range(10))).duplicates == 10  # re-sent while waiting
    assert quality(store, example_config)["label_coverage_ratio"] == 0.0
    store_predictions(store, predictions(range(20)))
    got = quality(store, example_config)
    assert got["label_coverage_ratio"] == 0.5
    assert got["true_positives"] == 5 and got["false_negatives"] == 5
    assert rows(store, WaitingLabel) == 0
    assert join_waiting_labels(store, IntakeRules()) == 0
    assert store_feedback(store, labels(range(10))).duplicates == 10  # re-sent after the join


def test_labels_racing_their_predictions_count_once_each(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """Labels and their predictions written at once by two writers: on PostgreSQL, neither
    transaction sees the other's rows; the collection's join counts what both missed."""
    start = threading.Barrier(2)

    def send(write: Callable[[range], object]) -> None:
        start.wait()
        for first in range(0, 600, 30):
            write(range(first, first + 30))

    writers = [
        threading.Thread(target=send, args=(lambda ids: store_feedback(store, labels(ids)),)),
        threading.Thread(target=send, args=(lambda ids: store_predictions(store, predictions(ids)),)),
    ]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    join_waiting_labels(store, IntakeRules())
    got = quality(store, example_config)
    assert (got["label_coverage_ratio"], got["true_positives"], got["false_negatives"]) == (1.0, 300, 300)
    assert rows(store, WaitingLabel) == 0


def test_labels_count_once_when_the_store_changed_between_their_read_and_their_claim(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """A batch of labels reads its predictions' keys before its transaction. Meanwhile another
    batch labels some of them and more predictions arrive: the claim decides what counts."""
    store_predictions(store, predictions(range(100)))
    write = feedback_writer(IntakeRules()).transaction(labels(range(150)), store)  # the read
    assert store_feedback(store, labels(range(0, 100, 2))).stored == 50  # labelled meanwhile
    store_predictions(store, predictions(range(100, 150)))  # stored meanwhile

    stored = store.write_idempotently(write, bulk=True)

    assert len(stored) == 100  # 50 labelled before, 50 read unlabelled, 50 arrived after the read
    got = quality(store, example_config)
    assert (got["label_coverage_ratio"], got["true_positives"], got["false_negatives"]) == (1.0, 75, 75)
    assert rows(store, WaitingLabel) == 0
    assert store_feedback(store, labels(range(150))).duplicates == 150


def test_a_labelled_key_keeps_only_what_recognises_a_resent_prediction_or_label(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """Labels join by either path (a batch of labels, a waiting label joined by its prediction's
    intake): the claim clears the join facts, and what a re-send needs stays."""
    store_predictions(store, predictions(range(100)))
    store_feedback(store, labels(range(50)))
    store_feedback(store, labels(range(100, 120)))
    store_predictions(store, predictions(range(100, 120)))

    with store.reading() as session:
        key = PredictionKey
        keys = session.execute(select(key.labelled, key.predicted.is_(None), key.score_bin.is_(None)))
        facts = Counter(tuple(row) for row in keys)
    assert facts == {(True, True, True): 70, (False, False, False): 50}
    got = quality(store, example_config)
    assert (got["true_positives"], got["false_negatives"]) == (35, 35)
    assert store_feedback(store, labels(range(50)) + labels(range(100, 120))).duplicates == 70
    assert store_predictions(store, predictions(range(120))).duplicates == 120
    assert quality(store, example_config)["true_positives"] == 35


def test_concurrent_joins_of_the_same_waiting_labels_count_each_once(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    store_predictions(store, predictions(range(200)))
    with store.writing() as session:  # what two racing transactions leave: a label waits, its key is here
        session.add_all(
            WaitingLabel(model_name=MODEL, request_id=f"r{i}", key=request_key(MODEL, f"r{i}"), label=1)
            for i in range(200)
        )
    joined: list[int] = []
    start = threading.Barrier(4)

    def join() -> None:
        start.wait()
        joined.append(join_waiting_labels(store, IntakeRules()))

    threads = [threading.Thread(target=join) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(joined) == 200
    assert quality(store, example_config)["label_coverage_ratio"] == 1.0


@given(st.text(max_size=20), st.text(max_size=40), st.text(max_size=40))
def test_different_requests_have_different_keys(model: str, first: str, second: str) -> None:
    assume(first != second)
    assert request_key(model, first) != request_key(model, second)
    assert request_key(model, first) != request_key(model + "x", first)


def test_counter_request_ids_keep_their_order_in_their_keys() -> None:
    """A batch of counter ids lands on neighbouring pages of the key table, not one page each."""
    keys = [request_key(MODEL, f"req-{i:06d}") for i in range(1000, 2000)]
    assert keys == sorted(keys) and len({key[:12] for key in keys}) == 1


def test_a_label_after_its_models_label_horizon_counts_nowhere(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """Keys are kept for the longest horizon of any model (they hold a hash, not their model), so
    each model's own horizon is kept by the join: a label later than it waits, and never joins."""
    model = example_config.models[0]
    short = model.model_copy(
        update={"windows": model.windows.model_copy(update={"label_horizon": timedelta(minutes=30)})}
    )
    rules = IntakeRules.of(example_config.model_copy(update={"models": [short]}), lambda _name: None)
    store_predictions(store, predictions(range(20)), rules)
    arrived = {f"r{i}": utcnow() - timedelta(minutes=31 if i < 10 else 29) for i in range(20)}
    with store.writing() as session:
        for request_id, at in arrived.items():
            session.execute(
                update(PredictionKey)
                .where(PredictionKey.key == request_key(MODEL, request_id))
                .values(received_at=at)
            )
    late = store_feedback(store, labels(range(20)), rules)
    assert (late.stored, rows(store, WaitingLabel)) == (20, 10)  # the late ten wait
    assert join_waiting_labels(store, rules) == 0
    got = quality(store, example_config)
    assert (got["label_coverage_ratio"], got["true_positives"], got["false_negatives"]) == (0.5, 5, 5)


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_without_every_raw_row_the_counts_and_the_dedupe_hold(
    store: Store, example_config: WatchkeeperConfig, fraction: float
) -> None:
    rules = IntakeRules(raw_fraction=fraction)
    first = store_predictions(store, predictions(range(1000)), rules)
    again = store_predictions(store, predictions(range(500, 1500)), rules)
    assert (first.stored, again.stored, again.duplicates) == (1000, 500, 500)
    store_feedback(store, labels(range(0, 1500, 2)), rules)
    kept = sum(in_sample(f"r{i}", fraction) for i in range(1500))
    assert rows(store, Prediction) == kept and rows(store, PredictionKey) == 1500
    assert rows(store, Feedback) == sum(in_sample(f"r{i}", fraction) for i in range(0, 1500, 2))
    assert 0.15 * 1500 < kept < 0.35 * 1500 if fraction else kept == 0
    window = bucket_window(END, timedelta(minutes=5), 60)
    traffic = {m.metric: m.value for m in measure_traffic(store, example_config.models[0], window)["v1"]}
    assert traffic["request_count"] == 1500
    assert quality(store, example_config)["label_coverage_ratio"] == 0.5


@pytest.mark.parametrize("chunk", [None, 7], ids=["one-chunk", "chunks-of-7"])
def test_folding_keeps_every_window_sum_and_concurrent_folds_count_once(
    store: Store, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three folds at once, each (on SQLite) in transactions of `FOLD_CHUNK` appended rows."""
    if chunk:
        monkeypatch.setattr("watchkeeper.store.buckets.FOLD_CHUNK", chunk)
    for start in range(0, 3000, 300):  # ten batches over three buckets
        store_predictions(store, predictions(range(start, start + 300), minutes_ago=1 + start // 1000))
    store_feedback(store, labels(range(0, 3000, 3)))
    span = (END - timedelta(hours=1), END)
    with store.reading() as session:
        before = window_totals(session, MODEL, *span)
    folded: list[int] = []
    start = threading.Barrier(3)

    def fold() -> None:
        start.wait()
        folded.append(fold_model_tallies(store))

    threads = [threading.Thread(target=fold) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(folded) > 0
    store_predictions(store, predictions(range(3000, 3100)))  # appended after the fold
    fold_model_tallies(store)
    with store.reading() as session:
        after = window_totals(session, MODEL, *span)
    assert after["v1"]["requests"][""] == before["v1"]["requests"][""] + 100 == 3100
    assert after["v1"]["outcome"] == before["v1"]["outcome"]


def test_a_window_is_the_sum_of_the_buckets_that_start_in_it(store: Store) -> None:
    store_predictions(store, predictions(range(10), minutes_ago=0.5))  # in the bucket of 09:59
    store_predictions(store, predictions(range(10, 30), minutes_ago=6))  # 09:54
    window = Window(bucket_start(END - timedelta(minutes=5), 60), END)
    assert window.start == END - timedelta(minutes=5)
    with store.reading() as session:
        assert window_totals(session, MODEL, window.start, window.end)["v1"]["requests"][""] == 10
        assert (
            window_totals(session, MODEL, window.start - timedelta(minutes=1), window.end)["v1"]["requests"][
                ""
            ]
            == 30
        )


@pytest.mark.parametrize("seconds", [0.0, 1e-6, 0.0123, 0.5, 1.0, 7.5, 2_592_000.0])
def test_a_latency_sketch_bucket_stands_for_its_values_within_one_percent(seconds: float) -> None:
    assert latency_at(latency_index(seconds)) == pytest.approx(seconds, rel=0.01, abs=1e-12)


def test_raw_rows_are_chosen_by_request_id_so_every_replica_and_the_label_agree() -> None:
    chosen = [i for i in range(100_000) if in_sample(f"req-{i}", 0.01)]
    assert 850 < len(chosen) < 1150
    assert chosen == [i for i in range(100_000) if in_sample(f"req-{i}", 0.01)]


def timed_predictions(ids: range, minute: int) -> list[PredictionRecord]:
    """Predictions spread over the minute `minute` minutes before END."""
    base = END - timedelta(minutes=minute)
    return [
        PredictionRecord(
            model_name=MODEL,
            model_version="v1",
            request_id=f"q{i}",
            timestamp=(base + timedelta(seconds=(i % 60))).isoformat(),
            features={"salary": float(i)},
            prediction=1,
        )
        for i in ids
    ]


def bottom_k(ids: list[str], k: int) -> list[str]:
    return sorted(ids, key=request_priority)[:k]


def test_two_replicas_sampling_one_bucket_keep_exactly_its_bottom_k(store: Store) -> None:
    """Each replica writes its own bottom k of what it saw; after the trim the store holds the
    bottom k of everything, as one replica would have written."""
    replicas = [IntakeRules(sampler=BottomK(50)), IntakeRules(sampler=BottomK(50))]
    records = timed_predictions(range(3000), minute=3)
    for index, start in enumerate(range(0, 3000, 250)):
        store_predictions(store, records[start : start + 250], replicas[index % 2])
    assert rows(store, PredictionSample) > 50
    trim_samples(store, 50, since=END - timedelta(hours=1))
    with store.reading() as session:
        kept = set(session.scalars(select(PredictionSample.request_id)))
    assert kept == set(bottom_k([r.request_id for r in records], 50))


def test_a_window_sample_is_uniform_however_the_traffic_varied(store: Store) -> None:
    """Buckets of 4,000, 400 and 40 predictions: the sample is every prediction whose priority is
    at most the smallest k-th priority of the full buckets, so each bucket is represented in
    proportion to its traffic, and a read gives the same rows every time."""
    rules = IntakeRules(sampler=BottomK(100))
    busy, quiet, idle = range(4000), range(4000, 4400), range(4400, 4440)
    for ids, minute in ((busy, 5), (quiet, 4), (idle, 3)):
        store_predictions(store, timed_predictions(ids, minute), rules)
    sampling = Sampling(k=100, bucket_seconds=60)
    start = END - timedelta(minutes=10)
    frame = prediction_frame(store, MODEL, start, END, sampling)
    tau = min(request_priority(bottom_k([f"q{i}" for i in ids], 100)[-1]) for ids in (busy, quiet))
    expected = {f"q{i}" for i in range(4440) if request_priority(f"q{i}") <= tau}
    assert set(frame["request_id"]) == expected
    # The busy bucket's own bottom 100 sets tau; the others come in proportion (about 10 and 1).
    assert sum(int(r[1:]) in busy for r in expected) == 100 and 100 < len(expected) < 130
    assert frame["salary"].notna().all()
    capped = prediction_frame(store, MODEL, start, END, sampling, at_most=40)
    assert list(capped["request_id"]) == list(frame["request_id"][:40])
    assert list(prediction_frame(store, MODEL, start, END, sampling)["request_id"]) == list(
        frame["request_id"]
    )


def migrate_down(store: Store, revision: str) -> None:
    from alembic import command

    config = Store._alembic_config()
    with store.engine.execution_options(watchkeeper_write=True).begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def test_series_and_samples_keyed_by_bucket_keep_every_total_and_sample_across_migration_0018(
    empty_store_url: str,
) -> None:
    """Migration 0018 keys the folded series and the samples by model and bucket (epoch seconds):
    down to the layout before it and up again, every window's totals (folded and appended alike)
    and its sample read the same, the trim keeps each bucket's bottom k, and the intake writes on."""
    store = Store(empty_store_url)
    try:
        store.upgrade()
        rules = IntakeRules(sampler=BottomK(50))
        for minute in (3, 4):
            store_predictions(
                store, timed_predictions(range(minute * 1000, minute * 1000 + 300), minute), rules
            )
        fold_model_tallies(store)
        store_predictions(store, timed_predictions(range(5000, 5200), 3), rules)  # left appended
        start, sampling = END - timedelta(minutes=10), Sampling(k=50, bucket_seconds=60)

        def read() -> tuple[dict, list[str]]:
            with store.reading() as session:
                totals = window_totals(session, MODEL, start, END)
            return totals, sorted(prediction_frame(store, MODEL, start, END, sampling)["request_id"])

        before = read()
        migrate_down(store, "0017")
        with store.reading() as session:  # the earlier layout's times, as SQLAlchemy binds them
            at = text("bucket_start = :at").bindparams(
                bindparam("at", END - timedelta(minutes=3), UTCDateTime())
            )
            for table in ("model_tallies", "prediction_samples"):
                assert session.execute(select(func.count()).select_from(text(table)).where(at)).scalar_one()
        store.upgrade()
        assert read() == before
        assert trim_samples(store, 50, since=start) > 0
        with store.reading() as session:
            kept = session.execute(
                select(PredictionSample.bucket_start, func.count()).group_by(PredictionSample.bucket_start)
            ).all()
        assert sorted(n for _, n in kept) == [50, 50]
        assert store_predictions(store, timed_predictions(range(6000, 6100), 4), rules).stored == 100
    finally:
        store.dispose()
