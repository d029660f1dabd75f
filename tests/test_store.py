"""The store on SQLite and on a real PostgreSQL cluster."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, inspect, select, text

from tasks.metrics import Measurement, Window, bucket_window, measure_quality, measure_traffic, save_results
from tests.conftest import save_predictions, store_feedback
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.intake.records import FeedbackRecord, PredictionRecord
from watchkeeper.service.metrics import histogram_families, latest_results
from watchkeeper.store import Store
from watchkeeper.store.intake import IntakeTotal, intake_counts, tally_totals
from watchkeeper.store.schema import EvaluationResult, Feedback, Prediction, PredictionKey, WaitingLabel
from watchkeeper.times import utcnow

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def prediction(request_id: str, version: str = "v1", **overrides: object) -> PredictionRecord:
    fields = {
        "model_name": "credit_approval",
        "model_version": version,
        "request_id": request_id,
        "timestamp": T0,
        "features": {"salary": 50_000.0, "elevel": 2},
        "prediction": 1,
        "score": 0.8,
        "latency_seconds": 0.02,
    }
    return PredictionRecord(**{**fields, **overrides})


def feedback(request_id: str, label: int = 1) -> FeedbackRecord:
    return FeedbackRecord(
        model_name="credit_approval", request_id=request_id, label=label, business_value=10.0
    )


def totals(store: Store) -> dict[tuple[str, str, str], int]:
    with store.reading() as session:
        counts = intake_counts(tally_totals(session))
    return {(r.kind, r.model_name, r.model_version): r.total for r in counts}


def test_migrations_create_every_table_and_reach_head(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {
        "predictions",
        "feedback",
        "tallies",
        "evaluation_results",
        "alert_notifications",
        "alerts",
        "flow_run_outbox",
        "incidents",
        "incident_members",
        "incident_events",
        "remediation_actions",
        "control_flags",
    } <= tables
    assert store.current_revision() == store.head_revision()
    assert store.upgrade() == store.head_revision()  # a second upgrade is a no-op


def test_predictions_are_stored_with_their_fields_and_utc_times(store: Store) -> None:
    local = datetime(2026, 11, 1, 13, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=1)))
    result = save_predictions(
        store, [prediction("r1", timestamp=local), prediction("r2", error=True, prediction=None)]
    )
    assert (result.received, result.stored, result.duplicates) == (2, 2, 0)
    with store.reading() as session:
        rows = {p.request_id: p for p in session.scalars(select(Prediction))}
    assert rows["r1"].timestamp == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)
    assert rows["r1"].features == {"salary": 50_000.0, "elevel": 2}
    assert rows["r1"].prediction == 1 and rows["r1"].score == 0.8 and rows["r1"].error is False
    assert rows["r2"].error is True and rows["r2"].prediction is None


def test_repeated_request_ids_are_stored_and_counted_once(store: Store) -> None:
    batch = [prediction("r1"), prediction("r2"), prediction("r1", prediction=0)]
    first = save_predictions(store, batch)
    second = save_predictions(store, batch)
    assert (first.stored, first.duplicates) == (2, 1)
    assert (second.stored, second.duplicates) == (0, 3)
    with store.reading() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 2
        kept = session.scalar(select(Prediction.prediction).where(Prediction.request_id == "r1"))
    assert kept == 1  # the first record wins
    assert totals(store) == {("predictions", "credit_approval", "v1"): 2}


def test_counts_follow_model_versions_and_feedback_takes_its_prediction_version(store: Store) -> None:
    save_predictions(store, [prediction("a", "v1"), prediction("b", "v2"), prediction("c", "v2")])
    store_feedback(store, [feedback("a"), feedback("b"), feedback("late-prediction")])
    store_feedback(store, [feedback("a", label=0)])
    assert totals(store) == {
        ("feedback", "credit_approval", "unknown"): 1,
        ("feedback", "credit_approval", "v1"): 1,
        ("feedback", "credit_approval", "v2"): 1,
        ("predictions", "credit_approval", "v1"): 1,
        ("predictions", "credit_approval", "v2"): 2,
    }
    with store.reading() as session:
        label = session.scalar(select(Feedback.label).where(Feedback.request_id == "a"))
    assert label == 1


def test_a_failing_batch_leaves_nothing_behind(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    save_predictions(store, [prediction("before")])
    import watchkeeper.store.intake as intake

    def fail_after_insert(tallies, session):  # noqa: ANN001
        raise RuntimeError("disk full")

    monkeypatch.setattr(intake.TallyRows, "write", fail_after_insert)
    with pytest.raises(RuntimeError):
        save_predictions(store, [prediction("x"), prediction("y")])
    with store.reading() as session:
        assert session.scalars(select(Prediction.request_id)).all() == ["before"]


def test_large_batch_is_stored_whole(store: Store) -> None:
    result = save_predictions(store, [prediction(f"r{i}") for i in range(5000)])
    assert result.stored == 5000
    assert totals(store)[("predictions", "credit_approval", "v1")] == 5000


def test_counters_carry_over_when_they_become_tallies(empty_store_url: str) -> None:
    """Migration 0005 turns the shared counter rows into tallies without losing a count."""
    store = Store(empty_store_url)
    try:
        store.upgrade("0004")
        with store.writing() as session:
            session.execute(text("INSERT INTO intake_counts VALUES ('predictions', 'm', 'v1', 7)"))
            for le, total in ((0.1, 2), (1.0, 1), (float("inf"), 0)):
                session.execute(
                    text("INSERT INTO histogram_buckets VALUES ('inference_latency', 'm', 'v1', :le, :n)"),
                    {"le": le, "n": total},
                )
            session.execute(
                text("INSERT INTO histogram_sums VALUES ('inference_latency', 'm', 'v1', 3, 0.75)")
            )
        assert store.upgrade() == store.head_revision()
        with store.reading() as session:
            tallies = tally_totals(session)
        assert intake_counts(tallies) == [IntakeTotal("predictions", "m", "v1", 7)]
        (latency,) = [f for f in histogram_families(tallies) if f.samples]
        samples = {(s.name, s.labels.get("le")): s.value for s in latency.samples}
        assert samples[("ai_model_inference_latency_seconds_bucket", "0.1")] == 2
        assert samples[("ai_model_inference_latency_seconds_bucket", "1.0")] == 3
        assert samples[("ai_model_inference_latency_seconds_bucket", "+Inf")] == 3
        assert samples[("ai_model_inference_latency_seconds_sum", None)] == 0.75
    finally:
        store.dispose()


def test_metrics_export_the_latest_window_and_a_backfill_does_not_move_it_back(store: Store) -> None:
    start = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    window = [
        Window(start + timedelta(minutes=5 * i), start + timedelta(minutes=5 * (i + 1))) for i in range(3)
    ]
    save_results(
        store, "model_quality", "m", "v1", window[1], [Measurement("accuracy", 0.9), Measurement("f1", 0.8)]
    )
    save_results(store, "model_quality", "m", "v1", window[0], [Measurement("accuracy", 0.1)])  # a backfill
    with store.reading() as session:
        assert {(r.metric, r.value) for r in latest_results(session)} == {("accuracy", 0.9), ("f1", 0.8)}
    save_results(store, "model_quality", "m", "v1", window[2], [Measurement("accuracy", 0.7)])
    with store.reading() as session:
        assert [(r.metric, r.value) for r in latest_results(session)] == [("accuracy", 0.7)]


def test_the_latest_windows_are_filled_from_history_on_upgrade(empty_store_url: str) -> None:
    store = Store(empty_store_url)
    try:
        store.upgrade("0005")
        start = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
        for i, value in enumerate((0.5, 0.9)):
            save_results_0005(store, start + timedelta(minutes=5 * i), value)
        store.upgrade()
        with store.reading() as session:
            assert [(r.metric, r.value) for r in latest_results(session)] == [("accuracy", 0.9)]
    finally:
        store.dispose()


def save_results_0005(store: Store, start: datetime, value: float) -> None:
    """An evaluation result as revision 0005 stored it (no latest window yet)."""
    row = {
        "kind": "model_quality",
        "subject": "m",
        "model_version": "v1",
        "window_start": start,
        "window_end": start + timedelta(minutes=5),
        "metric": "accuracy",
        "labels": {},
        "labels_key": "",
        "value": value,
        "computed_at": start,
    }
    with store.writing() as session:
        session.execute(EvaluationResult.__table__.insert(), [row])


def test_an_upgrade_to_aggregates_counts_the_last_days_raw_rows(
    empty_store_url: str, example_config: WatchkeeperConfig
) -> None:
    """Migration 0009 turns the last day's predictions and labels into keys and aggregates: windows
    read no gap after the upgrade, and a label still to come joins its prediction."""
    store = Store(empty_store_url)
    model = example_config.models[0]
    now = utcnow()
    try:
        store.upgrade("0008")
        with store.writing() as session:
            session.execute(
                Prediction.__table__.insert(),
                [
                    {
                        "model_name": model.name,
                        "model_version": "v1",
                        "request_id": f"r{i}",
                        "timestamp": now - timedelta(minutes=i % 20, seconds=1),
                        "features": {"salary": 1.0},
                        "prediction": i % 2,
                        "score": 0.7,
                        "latency_seconds": 0.05,
                        "error": False,
                        "received_at": now,
                    }
                    for i in range(300)
                ],
            )
            session.execute(
                Feedback.__table__.insert(),
                [
                    {
                        "model_name": model.name,
                        "request_id": f"r{i}",
                        "label": 1,
                        "timestamp": now,
                        "received_at": now,
                    }
                    for i in range(100)
                ],
            )
        assert store.upgrade() == store.head_revision()
        window = bucket_window(now, timedelta(minutes=30), 60)
        traffic = {m.metric: m.value for m in measure_traffic(store, model, window)["v1"]}
        assert traffic["request_count"] == 300
        before = {m.metric: m.value for m in measure_quality(store, model, window)["model_quality"]["v1"]}
        assert before["label_coverage_ratio"] == pytest.approx(1 / 3)
        late = store_feedback(store, [FeedbackRecord(model_name=model.name, request_id="r200", label=0)])
        again = store_feedback(store, [FeedbackRecord(model_name=model.name, request_id="r50", label=0)])
        assert (late.stored, again.duplicates) == (1, 1)  # r50 was labelled before the upgrade
        after = {m.metric: m.value for m in measure_quality(store, model, window)["model_quality"]["v1"]}
        assert after["label_coverage_ratio"] == pytest.approx(101 / 300)
    finally:
        store.dispose()


def test_an_upgrade_to_hashed_keys_keeps_the_dedupe_and_the_labels_waiting(empty_store_url: str) -> None:
    """Migration 0011 keys predictions by a hash: a key stored before still dedupes its re-sent
    prediction and joins its label, and a label waiting before joins its prediction after."""
    store = Store(empty_store_url)
    try:
        store.upgrade("0010")
        with store.writing() as session:
            session.execute(
                text(
                    "INSERT INTO prediction_keys (model_name, request_id, model_version, bucket_start,"
                    " predicted, score_bin, segments, labelled, received_at)"
                    " VALUES ('credit_approval', 'before', 'v1', :start, '1', '0.80', NULL, :no, :now)"
                ),
                {"start": int(T0.timestamp()), "no": False, "now": int(utcnow().timestamp())},
            )
            session.execute(
                text(
                    "INSERT INTO waiting_labels (model_name, request_id, label, business_value, received_at)"
                    " VALUES ('credit_approval', 'waiting', '1', 10.0, :now)"
                ),
                {"now": utcnow().replace(tzinfo=None)},
            )
        assert store.upgrade() == store.head_revision()
        assert save_predictions(store, [prediction("before"), prediction("waiting")]).stored == 1
        assert store_feedback(store, [feedback("before")]).stored == 1
        with store.reading() as session:
            assert session.scalar(select(func.count()).select_from(WaitingLabel)) == 0
            labelled = session.scalars(select(PredictionKey.labelled)).all()
        assert labelled == [True, True]
    finally:
        store.dispose()


def test_a_process_forked_while_another_thread_writes_takes_its_own_turn(store: Store) -> None:
    """SQLite's writers take turns on a lock per process and a `flock` across processes; a child
    forked while one of the parent's threads holds its turn must not inherit that turn (it would
    wait forever for a thread it does not have)."""
    import os
    import signal
    import threading

    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.writing():
            holding.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    child = os.fork()
    if child == 0:
        signal.alarm(60)  # a child stuck on the parent's turn dies, and the parent sees it
        store.engine.dispose(close=False)  # the parent's connections stay the parent's
        store_feedback(store, [feedback("from-the-child")])
        os._exit(0)
    release.set()
    holder.join()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with store.reading() as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 1
