"""`watchkeeper executor`: the warm executor as a process, and the Prefect server it may start.

Kept apart from `watchkeeper.runtime.executor` because Prefect reads `PREFECT_API_URL` when it is first
imported: a Prefect server of our own must be running, and the variable set, before that import.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from watchkeeper.config import WatchkeeperConfig
from watchkeeper.log_lines import log_json_lines
from watchkeeper.runtime.host import BIN, free_port, healthy
from watchkeeper.settings import Settings
from watchkeeper.store import Store
from watchkeeper.tracing import configure_tracing, exporting

log = logging.getLogger("watchkeeper.runtime.executor")
PR_SET_PDEATHSIG = 1
SERVER_START_SECONDS = 120.0
SHUTDOWN_FLUSH_SECONDS = 4.0


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the parent dies, even by kill -9."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def prefect_server_unless_configured(home: Path) -> Iterator[str | None]:
    """Yields PREFECT_API_URL. When it is unset, starts `prefect server start` on a free loopback
    port as a child that dies with this process (kill -9 included) and is stopped on exit.

    Left to itself, Prefect would start an "ephemeral" server that outlives a process killed by a
    signal: it stops that server only from an atexit hook."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "executor-prefect-server.log").open("ab") as out:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not healthy(f"{url}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Prefect server did not start; see {logs / 'executor-prefect-server.log'}"
                )
            time.sleep(0.5)
        os.environ["PREFECT_API_URL"] = url
        log.info("no PREFECT_API_URL: started a Prefect server at %s (pid %d)", url, server.pid)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def cheap_tls_for_plain_http(home: Path) -> None:
    """Prefect builds a verifying TLS context for every client it creates, about ten per flow run,
    and loading certifi's CA bundle costs ~35 ms of CPU each time, even when the API is plain http
    and TLS is never used. For a plain-http API (and no cert file of the user's), point
    PREFECT_API_SSL_CERT_FILE at a one-certificate bundle: 0.7 ms, and no connection uses it."""
    if not os.environ.get("PREFECT_API_URL", "").startswith("http://"):
        return
    if os.environ.get("PREFECT_API_SSL_CERT_FILE"):
        return
    import certifi

    bundle = Path(certifi.where()).read_text()
    end = bundle.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    first = bundle[bundle.index("-----BEGIN CERTIFICATE-----") : end]
    path = home / "run" / "prefect-plain-http-ca.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(first + "\n")
    os.environ["PREFECT_API_SSL_CERT_FILE"] = str(path)


def run_executor(settings: Settings, config: WatchkeeperConfig, store: Store) -> None:
    """Until SIGTERM or SIGINT: then no new run is taken, running ones get a grace period."""
    log_json_lines("executor")
    configure_tracing("executor")
    if not exporting():
        # Prefect's run spans cost each run an API call (the run's traceparent label) and each task
        # its spans: 0.065 s more from an alert to its action (benchmarks/remediation.py), paid
        # only where a receiver will see them. Watchkeeper's own spans keep the trace ids.
        os.environ.setdefault("PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY", "false")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    store.upgrade()
    with prefect_server_unless_configured(settings.resolved_home):
        cheap_tls_for_plain_http(settings.resolved_home)
        from datetime import timedelta

        from deployments.serve import FLOWS, build_deployments
        from watchkeeper.runtime.executor import WarmExecutor

        warm = WarmExecutor(
            store,
            build_deployments(settings),
            FLOWS,
            config.executor,
            max_backoff=timedelta(seconds=settings.outbox_max_backoff_seconds),
            nudged_in=settings.run_dir,
        )
        warm.start()
        while not stop.is_set():
            if warm.ready.wait(1):
                log.info("executor %s serving %d deployments", warm.id, len(warm.deployment_names))
                break
        stop.wait()
        log.info("stopping: no new runs; %d running get a grace period", len(warm.executing))
        warm.stop()
        _flush_prefect(SHUTDOWN_FLUSH_SECONDS)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Prefect drains its log and event queues at interpreter exit, retrying for minutes when its
    # API is gone; they were flushed above for as long as a stop may take.
    os._exit(0)


def _flush_prefect(timeout: float) -> None:
    """Send the logs and events of the last runs, for at most `timeout` seconds."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout / 2)
        except Exception:  # noqa: BLE001 - what could not be sent by now is lost with the API
            log.warning("could not flush Prefect's %s", worker.__name__)
