"""Logging predictions, labels and feature lookups from a model service: `log_prediction`,
`log_label` and `log_feature_lookup` return in microseconds; a background thread sends them in
gzipped batches.

Only the standard library is imported, so a model service can vendor this file or install
Watchkeeper without its server's dependencies::

    from watchkeeper.client import WatchkeeperClient

    client = WatchkeeperClient("http://127.0.0.1:8080", token=os.environ.get("WATCHKEEPER_TOKEN"))
    client.log_prediction("fraud", "v3", request_id, features, prediction=1, score=0.93)
    client.log_label("fraud", request_id, label=0)

What it promises a model service:
- a batch goes when `batch_size` records are queued, and the rest every `flush_interval` seconds
  (or on `flush()`): against a slow service, batches grow instead of multiplying. Five seconds by
  default, as OpenTelemetry's batch span processor: what the service spends a POST and a model
  (request, transaction, aggregate rows) is shared by five times the records that one second gave;
- it never blocks nor raises in the serving path: the queue is bounded (`max_queued` records), and a
  record that finds it full is dropped and counted (`stats().dropped`);
- a batch the service did not acknowledge is sent again, the same records with the same request
  ids, so the intake counts it once; it backs off (exponentially, honouring Retry-After) on 429,
  503, other 5xx answers and network errors, and keeps trying until `close()` gives up;
- a batch the service answers 413 (more records or bytes than its `intake` limits: a `batch_size`
  above the service's `max_records`) goes again in halves, so none is lost to its size;
- a batch the service refuses (another 4xx: a record that breaks the schema) is not retried: it is
  counted in `stats().refused`, with the service's answer in `stats().last_refusal`;
- at interpreter exit it sends what is queued, for at most `exit_timeout` seconds; what it could
  not send by then is counted as dropped.
"""

from __future__ import annotations

import atexit
import gzip
import http.client
import json
import random
import threading
import time
import urllib.parse
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

RETRIED_STATUSES = {408, 425, 429, 500, 502, 503, 504}
# In the order batches take turns: predictions first, and no kind twice in a row while another waits.
PATHS = {"prediction": "/v1/predictions", "label": "/v1/feedback", "feature_lookup": "/v1/feature-lookups"}


@dataclass(frozen=True)
class ClientStats:
    queued: int
    sent: int  # records the service acknowledged (stored or recognised as duplicates)
    dropped: int  # records never queued: the queue was full
    refused: int  # records in batches the service refused with a 4xx
    retries: int  # sends that failed and were tried again
    last_refusal: str | None


class WatchkeeperClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        batch_size: int = 1000,
        flush_interval: float = 5.0,
        max_queued: int = 100_000,
        timeout: float = 10.0,
        max_backoff: float = 30.0,
        exit_timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._target = urllib.parse.urlsplit(self.url)
        self._connection: http.client.HTTPConnection | None = None  # the sender thread's own
        self.batch_size, self.flush_interval, self.max_queued = batch_size, flush_interval, max_queued
        self.timeout, self.max_backoff, self.exit_timeout = timeout, max_backoff, exit_timeout
        self._headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._queues: dict[str, deque[dict[str, Any]]] = {kind: deque() for kind in PATHS}
        self._owed = dict.fromkeys(PATHS, 0)  # records of each kind to send without a whole batch
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        # Predictions queued or in flight, by (model, request id): their labels wait behind them.
        self._unsent: Counter[tuple[str, str]] = Counter()
        self._closing = False
        self._counts = {"sent": 0, "dropped": 0, "refused": 0, "retries": 0}
        self._last_refusal: str | None = None
        self._last_kind = "feature_lookup"
        self._thread = threading.Thread(target=self._run, name="watchkeeper-client", daemon=True)
        self._thread.start()
        atexit.register(self.close, self.exit_timeout)

    def log_prediction(
        self,
        model_name: str,
        model_version: str,
        request_id: str,
        features: dict[str, Any],
        prediction: Any = None,
        score: float | None = None,
        latency_seconds: float | None = None,
        error: bool = False,
        timestamp: datetime | None = None,
        trace_id: str | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "model_name": model_name,
            "model_version": model_version,
            "request_id": request_id,
            "timestamp": _iso(timestamp),
            "features": features,
            "prediction": prediction,
            "error": error,
        }
        if score is not None:
            record["score"] = score
        if latency_seconds is not None:
            record["latency_seconds"] = latency_seconds
        if trace_id is not None:
            record["trace_id"] = trace_id
        self._enqueue("prediction", record)

    def log_label(
        self,
        model_name: str,
        request_id: str,
        label: Any,
        business_value: float | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        record: dict[str, Any] = {"model_name": model_name, "request_id": request_id, "label": label}
        if business_value is not None:
            record["business_value"] = business_value
        if timestamp is not None:
            record["timestamp"] = _iso(timestamp)
        self._enqueue("label", record)

    def log_feature_lookup(
        self,
        feature_store: str,
        feature_view: str,
        request_id: str,
        latency_seconds: float,
        keys: int = 1,
        errors: int = 0,
        materialized_at: datetime | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """One lookup of a feature view: `errors` of its `keys` failed or found no value;
        `materialized_at` is the newest materialisation time among the values it served."""
        record: dict[str, Any] = {
            "feature_store": feature_store,
            "feature_view": feature_view,
            "request_id": request_id,
            "timestamp": _iso(timestamp),
            "latency_seconds": latency_seconds,
            "keys": keys,
            "errors": errors,
        }
        if materialized_at is not None:
            record["materialized_at"] = _iso(materialized_at)
        self._enqueue("feature_lookup", record)

    def _enqueue(self, kind: str, record: dict[str, Any]) -> None:
        with self._lock:
            queue = self._queues[kind]
            if self._closing or sum(len(q) for q in self._queues.values()) >= self.max_queued:
                self._counts["dropped"] += 1
                return
            queue.append(record)
            if kind == "prediction":
                self._unsent[_key(record)] += 1
            if len(queue) >= self.batch_size:
                self._wake.set()

    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(
                queued=sum(len(q) for q in self._queues.values()) + self._in_flight,
                last_refusal=self._last_refusal,
                **self._counts,
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far was acknowledged or refused; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._in_flight or any(self._queues.values()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._owe_everything()
                self._wake.set()
                self._idle.wait(0.05 if remaining is None else min(remaining, 0.05))
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Send what is queued (for at most `timeout` seconds), then stop; later records are dropped."""
        flushed = self.flush(self.exit_timeout if timeout is None else timeout)
        with self._lock:
            self._closing = True
            left = sum(len(q) for q in self._queues.values())
            self._counts["dropped"] += left
            for queue in self._queues.values():
                queue.clear()
            self._unsent.clear()
        self._stop.set()
        self._wake.set()
        self._thread.join(self.timeout + 1.0)
        atexit.unregister(self.close)
        return flushed

    def _take(self) -> tuple[str, list[dict[str, Any]]] | None:
        """The next batch: a whole one (`batch_size` records), or the records owed since the last
        tick or `flush()` (`_owe_everything`). Predictions first, but no kind twice in a row while
        another waits (in turns, `PATHS`' order): against a slow service, predictions arrive faster
        than they are sent, and labels would never go. A label never goes before its prediction (it
        would wait in the store, counted under an unknown version): labels go in order up to the
        first whose prediction is still unsent."""
        kinds = list(PATHS)
        after = kinds.index(self._last_kind) + 1
        order = kinds[after:] + kinds[:after]
        with self._lock:
            for kind in order:
                queue = self._queues[kind]
                ready = min(len(queue), self.batch_size)
                if kind == "label":
                    ready = next((i for i in range(ready) if _key(queue[i]) in self._unsent), ready)
                if ready == 0 or (ready < self.batch_size and not self._owed[kind]):
                    continue
                batch = [queue.popleft() for _ in range(ready)]
                self._owed[kind] = max(0, self._owed[kind] - ready)
                self._in_flight = len(batch)
                self._last_kind = kind
                return kind, batch
        return None

    def _owe_everything(self) -> None:
        """What is queued now goes in this round, whole batches or not (the caller holds the lock).
        Records logged later wait for the next tick unless they make a whole batch: a slow service
        would otherwise get, back to back, batches of whatever arrived during the last POST, each
        costing it a request."""
        for kind, queue in self._queues.items():
            self._owed[kind] = len(queue)

    def _sent(self, kind: str, batch: list[dict[str, Any]]) -> None:
        """A batch is done with: acknowledged, refused or given up."""
        with self._lock:
            self._in_flight = 0
            for key in (_key(record) for record in batch) if kind == "prediction" else ():
                if self._unsent[key] > 1:
                    self._unsent[key] -= 1
                else:
                    self._unsent.pop(key, None)
            self._idle.notify_all()

    def _run(self) -> None:
        tick = time.monotonic() + self.flush_interval
        while True:
            self._wake.wait(max(0.0, tick - time.monotonic()))
            self._wake.clear()
            if time.monotonic() >= tick:
                tick = time.monotonic() + self.flush_interval
                with self._lock:
                    self._owe_everything()
            while (taken := self._take()) is not None:
                kind, batch = taken
                self._deliver(PATHS[kind], batch)
                self._sent(kind, batch)
            with self._lock:
                self._idle.notify_all()
                closing = self._closing
            if closing:
                self._disconnect()
                return

    def _deliver(self, path: str, batch: list[dict[str, Any]]) -> None:
        body = gzip.compress(json.dumps(batch, default=str).encode(), compresslevel=1)
        backoff = 0.1
        while True:
            retry_after = None
            try:
                status, answer, retry_after = self._post(path, body)
                if 200 <= status < 300:
                    with self._lock:
                        self._counts["sent"] += len(batch)
                    return
                if status == 413 and len(batch) > 1:
                    half = len(batch) // 2
                    self._deliver(path, batch[:half])
                    self._deliver(path, batch[half:])
                    return
                if status not in RETRIED_STATUSES:
                    with self._lock:
                        self._counts["refused"] += len(batch)
                        self._last_refusal = f"{status}: {answer[:500].decode(errors='replace')}"
                    return
            except OSError:
                pass
            with self._lock:
                if self._closing:
                    self._counts["dropped"] += len(batch)
                    return
                self._counts["retries"] += 1
            wait = retry_after if retry_after is not None else backoff * (0.5 + random.random())
            self._stop.wait(min(wait, self.max_backoff))
            backoff = min(backoff * 2, self.max_backoff)

    def _post(self, path: str, body: bytes) -> tuple[int, bytes, float | None]:
        """One POST on the connection this sender keeps open (a new TCP connection per batch costs
        the model service and the Watchkeeper service alike): its status, body and Retry-After. A
        kept connection the service has closed meanwhile (its keep-alive timeout) is opened again
        at once; any other failure (a timeout: the service is slow) raises OSError, and the caller
        backs off."""
        for fresh in (self._connection is None, True):
            if fresh:
                self._disconnect()
                self._connection = self._connect()
            assert self._connection is not None
            try:
                self._connection.request("POST", self._target.path + path, body, self._headers)
                answer = self._connection.getresponse()
                data = answer.read()
            except (OSError, http.client.HTTPException) as exc:
                self._disconnect()
                if fresh or not isinstance(exc, ConnectionResetError | BrokenPipeError):
                    raise OSError(str(exc)) from exc
                continue
            if answer.will_close:
                self._disconnect()
            return answer.status, data, _seconds(answer.getheader("Retry-After"))
        raise AssertionError("unreachable")

    def _connect(self) -> http.client.HTTPConnection:
        target = self._target
        kind = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
        return kind(target.hostname or "localhost", target.port, timeout=self.timeout)

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _key(record: dict[str, Any]) -> tuple[str, str]:
    return record["model_name"], record["request_id"]


def _iso(timestamp: datetime | None) -> str:
    when = timestamp or datetime.now(UTC)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None
