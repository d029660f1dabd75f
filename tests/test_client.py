"""The model services' client: batches reach the real service once each, whatever it answers, and
nothing is lost that the client did not count as dropped, even when the service is killed."""

from __future__ import annotations

import http.client
import http.server
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from tests.conftest import LiveService
from watchkeeper.client import WatchkeeperClient
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.local.stack import service_process
from watchkeeper.runtime.host import free_port
from watchkeeper.settings import DEFAULT_CONFIG
from watchkeeper.store import Store
from watchkeeper.store.buckets import fold_model_tallies
from watchkeeper.store.intake import intake_counts, tally_totals
from watchkeeper.store.schema import ModelTally, PredictionKey

MODEL = "credit_approval"
AT = datetime(2026, 11, 26, 9, 59, tzinfo=UTC)


def log(client: WatchkeeperClient, ids: range, model: str = MODEL) -> None:
    for i in ids:
        client.log_prediction(
            model, "v1", f"r{i}", {"salary": 40_000.0 + i}, prediction=i % 2, score=0.7, timestamp=AT
        )


def stored(store: Store) -> dict[str, float]:
    fold_model_tallies(store)
    with store.reading() as session:
        keys = session.scalar(select(func.count()).select_from(PredictionKey))
        requests = session.scalar(select(func.sum(ModelTally.total)).where(ModelTally.measure == "requests"))
        counted = {(c.kind, c.model_version): c.total for c in intake_counts(tally_totals(session))}
    return {"keys": keys or 0, "requests": requests or 0, "counted": counted.get(("predictions", "v1"), 0)}


def test_batches_reach_the_service_once_and_labels_join_their_predictions(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    with LiveService(example_config, store) as service:
        client = WatchkeeperClient(service.url, batch_size=400, flush_interval=0.05)
        log(client, range(2500))
        for i in range(0, 2500, 2):
            client.log_label(MODEL, f"r{i}", label=1, business_value=5.0)
        log(client, range(100))  # a model service's own retry: the same request ids again
        assert client.flush(timeout=60)
        client.close()
    stats = client.stats()
    assert (stats.sent, stats.dropped, stats.refused, stats.queued) == (2500 + 1250 + 100, 0, 0, 0)
    assert stored(store) == {"keys": 2500, "requests": 2500, "counted": 2500}
    fold_model_tallies(store)
    with store.reading() as session:
        labelled = session.scalar(select(func.sum(ModelTally.total)).where(ModelTally.measure == "outcome"))
    assert labelled == 1250


def test_a_refused_batch_is_counted_and_not_sent_again(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    with LiveService(example_config, store) as service:
        client = WatchkeeperClient(service.url, batch_size=10, flush_interval=0.05)
        log(client, range(10), model="no_such_model")
        log(client, range(10, 20))
        assert client.flush(timeout=30)
        client.close()
    stats = client.stats()
    assert (stats.sent, stats.refused, stats.retries) == (10, 10, 0)
    assert stats.last_refusal is not None and "unknown model 'no_such_model'" in stats.last_refusal


class CountedConnections(WatchkeeperClient):
    """The client, counting the TCP connections it opens."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.connections = 0
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _connect(self) -> http.client.HTTPConnection:
        self.connections += 1
        return super()._connect()


def test_batches_share_one_connection_and_a_broken_one_is_opened_again_at_once(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    with LiveService(example_config, store) as service:
        client = CountedConnections(service.url, batch_size=10, flush_interval=0.05)
        log(client, range(50))
        assert client.flush(timeout=30)
        assert client.connections == 1
        assert client._connection is not None and client._connection.sock is not None
        client._connection.sock.shutdown(socket.SHUT_RDWR)  # as when the service's keep-alive ends
        log(client, range(50, 60))
        assert client.flush(timeout=30)
        client.close()
    stats = client.stats()
    assert (stats.sent, stats.retries, client.connections) == (60, 0, 2)
    assert stored(store)["keys"] == 60


def test_a_slow_answer_on_a_kept_connection_backs_off_instead_of_sending_again_at_once() -> None:
    """Only a connection the service closed is opened again at once: a timeout means the service is
    slow, and sending the batch again straight away would add to its load."""
    posts: list[float] = []

    class SlowOnce(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(time.monotonic())
            if len(posts) == 2:
                time.sleep(3.0)  # longer than the client's timeout
            try:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on the slow answer

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowOnce)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = WatchkeeperClient(f"http://127.0.0.1:{server.server_port}", batch_size=5, timeout=1.0)
        log(client, range(5))
        assert client.flush(timeout=10)
        log(client, range(5, 10))
        assert client.flush(timeout=10)
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    stats = client.stats()
    assert (stats.sent, stats.retries, len(posts)) == (10, 1, 3)


def test_a_full_queue_drops_and_counts_instead_of_blocking_the_model_service() -> None:
    client = WatchkeeperClient(f"http://127.0.0.1:{free_port()}", max_queued=10, flush_interval=0.05)
    log(client, range(25))  # nobody listens: nothing is acknowledged
    assert client.stats().dropped == 15
    assert client.close(timeout=0.5) is False
    stats = client.stats()
    assert (stats.sent, stats.dropped, stats.queued) == (0, 25, 0) and stats.retries >= 1


def test_labels_go_between_prediction_batches_when_predictions_keep_coming() -> None:
    """A slow service: predictions pile up while a batch is in flight. Labels still go, a batch of
    them after each batch of predictions, instead of waiting for a prediction queue that never
    empties."""
    in_flight, release = threading.Event(), threading.Event()
    sent: list[tuple[str, int]] = []

    class SlowService(WatchkeeperClient):
        def _deliver(self, path: str, batch: list) -> None:
            sent.append((path.rsplit("/", 1)[-1], len(batch)))
            in_flight.set()
            release.wait(30)

    client = SlowService(f"http://127.0.0.1:{free_port()}", batch_size=1000, flush_interval=3600)
    log(client, range(1000))  # a full batch wakes the sending thread
    assert in_flight.wait(30)
    log(client, range(1000, 3000))
    for i in range(1500):
        client.log_label(MODEL, f"r{i}", 1)
    release.set()
    assert client.flush(30)
    assert sent == [
        ("predictions", 1000),
        ("feedback", 1000),
        ("predictions", 1000),
        ("feedback", 500),
        ("predictions", 1000),
    ]
    client.close(timeout=0)


def test_a_slow_service_gets_larger_batches_not_more_of_them() -> None:
    """Records logged while a batch is in flight wait for a whole batch or the next tick: sent as
    soon as the POST returned, each would be a small batch, and a slow service would get more
    requests the slower it is (fifty models' clients sent 800 POSTs a second of 5 records each)."""
    release = threading.Semaphore(0)
    taken: queue.Queue[int | None] = queue.Queue()  # what each decision of the sending thread took

    class SlowService(WatchkeeperClient):
        def _take(self) -> tuple[str, list[dict]] | None:
            batch = super()._take()
            taken.put(None if batch is None else len(batch[1]))
            return batch

        def _deliver(self, path: str, batch: list) -> None:
            assert release.acquire(timeout=30)

    client = SlowService(f"http://127.0.0.1:{free_port()}", batch_size=100, flush_interval=3600)
    log(client, range(100))
    assert taken.get(timeout=30) == 100
    log(client, range(100, 130))
    release.release()
    assert taken.get(timeout=30) is None  # 30 records: not a whole batch, and no tick yet
    log(client, range(130, 200))
    assert taken.get(timeout=30) == 100
    release.release()
    assert taken.get(timeout=30) is None
    log(client, range(200, 250))
    release.release()  # for the flush's batch
    assert client.flush(30)
    assert taken.get(timeout=30) == 50
    client.close(timeout=0)


def test_a_batch_over_the_services_limits_goes_again_in_halves(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """A `batch_size` above the service's `intake.max_records`: the service answers 413, and the
    client sends the batch again in halves until they fit; nothing is refused or counted twice."""
    intake = example_config.intake.model_copy(update={"max_records": 300})
    config = example_config.model_copy(update={"intake": intake})
    statuses: list[int] = []

    class Counted(WatchkeeperClient):
        def _post(self, path: str, body: bytes) -> tuple[int, bytes, float | None]:
            answer = super()._post(path, body)
            statuses.append(answer[0])
            return answer

    with LiveService(config, store) as service:
        client = Counted(service.url, batch_size=1000, flush_interval=3600)
        log(client, range(1000))
        assert client.flush(timeout=60)  # 1,000 refused, 500 refused, 250 and 250 taken, and again
        client.close()
    stats = client.stats()
    assert (stats.sent, stats.refused, stats.dropped) == (1000, 0, 0)
    assert statuses == [413, 413, 200, 200, 413, 200, 200]
    assert stored(store) == {"keys": 1000, "requests": 1000, "counted": 1000}


def test_a_label_never_goes_before_its_prediction() -> None:
    """Labels alternate with predictions, but one whose prediction is still queued waits for it:
    sent first, it would wait in the store and count under an unknown version."""
    in_flight, release = threading.Event(), threading.Event()
    sent: list[tuple[str, list[str]]] = []

    class SlowService(WatchkeeperClient):
        def _deliver(self, path: str, batch: list) -> None:
            sent.append((path.rsplit("/", 1)[-1], [record["request_id"] for record in batch]))
            in_flight.set()
            release.wait(30)

    client = SlowService(f"http://127.0.0.1:{free_port()}", batch_size=1000, flush_interval=3600)
    log(client, range(1000))
    assert in_flight.wait(30)
    log(client, range(1000, 1100))
    for i in [*range(1000, 1050), *range(10)]:
        client.log_label(MODEL, f"r{i}", 1)
    release.set()
    assert client.flush(30)
    assert [(path, len(ids)) for path, ids in sent] == [
        ("predictions", 1000),
        ("predictions", 100),
        ("feedback", 60),
    ]
    client.close(timeout=0)


def test_a_killed_and_restarted_service_loses_nothing_and_stores_nothing_twice(
    store: Store, tmp_path: Path
) -> None:
    """kill -9 mid-stream: batches in flight are sent again after the restart, and the intake
    recognises the ones it had already stored."""
    port = free_port()
    url = store.url.render_as_string(hide_password=False)
    client = WatchkeeperClient(
        f"http://127.0.0.1:{port}", batch_size=200, flush_interval=0.02, max_backoff=0.5
    )
    total = 20_000
    with service_process(url, tmp_path, port=port) as first:
        sender = threading.Thread(target=log, args=(client, range(total)))
        sender.start()
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        while stored(store)["keys"] < 2000 and datetime.now(UTC) < deadline:
            client.flush(timeout=0.1)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        sender.join()
    with service_process(url, tmp_path, port=port):
        assert client.flush(timeout=120)
        client.close()
    stats = client.stats()
    assert stats.dropped == 0 and stats.refused == 0 and stats.retries >= 1
    assert stored(store) == {"keys": total, "requests": total, "counted": total}


def test_the_client_imports_without_the_servers_dependencies(tmp_path: Path) -> None:
    """A model service may vendor the module: it needs the standard library alone."""
    module = Path(__file__).resolve().parent.parent / "watchkeeper" / "client.py"
    (tmp_path / "client.py").write_text(module.read_text())
    heavy = "('httpx', 'pydantic', 'sqlalchemy', 'pandas', 'watchkeeper')"
    script = (
        "import sys; sys.path.insert(0, '.'); import client; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    )
    found = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def test_service_processes_share_the_port_and_store_each_prediction_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`intake.processes: 3`: uvicorn's workers answer on one port; clients of eight model services
    posting at once, each batch sent twice, count every prediction once (on SQLite the processes'
    writes take turns)."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["intake"] = {**config.get("intake", {}), "processes": 3}
    (tmp_path / "watchkeeper.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("WATCHKEEPER_CONFIG", str(tmp_path / "watchkeeper.yaml"))
    url = store.url.render_as_string(hide_password=False)
    with service_process(url, tmp_path) as service:
        workers = descendants(service.pid)
        clients = [WatchkeeperClient(service.url, batch_size=250, flush_interval=0.05) for _ in range(8)]
        senders = [
            threading.Thread(target=log, args=(client, range(i * 1000, (i + 1) * 1000)))
            for i, client in enumerate(clients)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        for client in clients:
            assert client.flush(timeout=120)
        log(clients[0], range(2000))  # re-sent: the same request ids again
        for client in clients:
            client.close()
    assert len(workers) >= 3
    assert sum(client.stats().sent for client in clients) == 10_000
    assert stored(store) == {"keys": 8000, "requests": 8000, "counted": 8000}


def descendants(pid: int) -> set[int]:
    """The processes whose parent is `pid` (uvicorn's workers)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return children
