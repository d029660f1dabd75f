"""Several processes at once on one store: replicas migrating together, dispatchers sharing one
outbox. Each on SQLite and on PostgreSQL."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import text

from tests.realstack import wait_until
from tests.test_alert_intake import NOTIFICATION
from watchkeeper.runtime.dispatcher import OutboxDispatcher
from watchkeeper.store import Store
from watchkeeper.store.alerts import WebhookNotification, store_notification
from watchkeeper.store.outbox import OwedRun

WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")


REPLICA = """
import sys, time
from pathlib import Path
from watchkeeper.store import Store
store = Store(sys.argv[1])
store.ping()
Path(sys.argv[3]).touch()
while not Path(sys.argv[2]).exists():  # until every replica is connected: then all upgrade at once
    time.sleep(0.005)
print(store.upgrade())
"""


def test_replicas_starting_together_migrate_once(empty_store_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", REPLICA, empty_store_url, str(go), str(tmp_path / f"ready-{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(6)
    ]
    wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == 6, "every replica to connect", timeout=120)
    go.touch()
    ready = Store(empty_store_url)
    outputs = [replica.communicate(timeout=180)[0] for replica in replicas]
    assert [r.returncode for r in replicas] == [0] * 6, outputs
    try:
        assert ready.current_revision() == ready.head_revision()
        assert {o.strip().splitlines()[-1] for o in outputs} == {ready.head_revision()}
        with ready.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        ready.dispose()


def test_two_dispatchers_on_one_outbox_start_each_owed_run_once(store: Store) -> None:
    for i in range(30):
        body = copy.deepcopy(NOTIFICATION)
        body["groupKey"] = f"group-{i}"
        for alert in body["alerts"]:
            alert["fingerprint"] = f"{alert['fingerprint']}-{i}"
        store_notification(store, WebhookNotification.model_validate(body), body)
    started: Counter[str] = Counter()
    lock = threading.Lock()

    def start_run(run: OwedRun) -> str:
        time.sleep(0.01)  # a Prefect API call takes a while: the other dispatcher is claiming meanwhile
        with lock:
            started[run.idempotency_key] += 1
        return f"run-{run.id}"

    dispatchers = [OutboxDispatcher(store, start_run) for _ in range(2)]
    barrier = threading.Barrier(2)

    def drain(dispatcher: OutboxDispatcher) -> None:
        barrier.wait(timeout=30)
        for _ in range(5):
            dispatcher.dispatch_due()

    threads = [threading.Thread(target=drain, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(started) == 30 and set(started.values()) == {1}
