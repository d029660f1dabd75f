"""Shared fixtures: free ports, throwaway PostgreSQL, stores on both back ends, a live service."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from watchkeeper.config import SecretRef, User, WatchkeeperConfig, load_config
from watchkeeper.intake.records import FeedbackRecord, PredictionRecord
from watchkeeper.local.pgtemp import PostgresMissing, new_database, postgres_cluster
from watchkeeper.runtime.host import free_port
from watchkeeper.service.app import create_app
from watchkeeper.service.people import hash_password
from watchkeeper.settings import DEFAULT_CONFIG, Credentials, Role
from watchkeeper.store import Store
from watchkeeper.store.intake import (
    DEFAULT_RULES,
    IntakeRules,
    StoredBatch,
    feedback_writer,
    prediction_writer,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port; yields its admin URL. A machine
    without PostgreSQL fails the tests that need it: they are never skipped."""
    try:
        with postgres_cluster() as url:
            yield url
    except PostgresMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    return new_database(postgres_server)


def store_url(back_end: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """An empty store's URL on the back end: a file in `folder`, or a new PostgreSQL database."""
    if back_end == "sqlite":
        return f"sqlite:///{folder / 'store.db'}"
    return new_database(request.getfixturevalue("postgres_server"))


BACK_ENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(autouse=True)
def _store_parity(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse a test that opens a store without running on both back ends: SQLite ignores lengths,
    constraints and isolation that PostgreSQL enforces, so a SQLite-only test hides exactly the
    failures that matter. A test runs on both when a fixture of it is parametrized over BACK_ENDS
    (`store`, `empty_store_url`), or it says why it cannot with `@pytest.mark.sqlite_only(reason)`."""
    opened: list[str] = []
    original = Store.__init__

    def recording(self: Store, url: str) -> None:
        original(self, url)
        opened.append(self.url.get_backend_name())

    monkeypatch.setattr(Store, "__init__", recording)
    yield
    callspec = getattr(request.node, "callspec", None)
    on_both = callspec is not None and any(v in ("sqlite", "postgresql") for v in callspec.params.values())
    if opened and not on_both and request.node.get_closest_marker("sqlite_only") is None:
        pytest.fail(
            f"{request.node.nodeid} opens a store ({', '.join(sorted(set(opened)))}) but does not run on "
            "SQLite and PostgreSQL: use the `store` fixture (or another parametrized over BACK_ENDS)"
        )


@pytest.fixture(params=BACK_ENDS)
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that has never been migrated, on each back end."""
    return store_url(request.param, tmp_path, request)


@pytest.fixture
def store(empty_store_url: str) -> Iterator[Store]:
    """A migrated store on each back end."""
    store = Store(empty_store_url)
    store.upgrade()
    yield store
    store.dispose()


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real Prefect server for the session (Prefect's test harness: ~12 s once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def example_config() -> WatchkeeperConfig:
    return load_config(DEFAULT_CONFIG)


class LiveService:
    """The real FastAPI app under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(
        self,
        config: WatchkeeperConfig,
        store: Store,
        api_token: str | None = None,
        credentials: Credentials | None = None,
        **app_options: object,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(config, store, credentials or Credentials.shared(api_token), **app_options)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveService:
        started = threading.Event()
        original = self.server.startup

        async def startup(*args: object, **kwargs: object) -> None:
            await original(*args, **kwargs)
            started.set()

        self.server.startup = startup  # type: ignore[method-assign]
        self.thread.start()
        if not started.wait(timeout=30):
            raise RuntimeError("the service did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def alertmanager_only(token: str, basic: str | None = None) -> Credentials:
    """Credentials on the Alertmanager webhook alone, as WATCHKEEPER_ALERTMANAGER_TOKEN sets them."""
    return Credentials(
        alertmanager=Role("alertmanager", token, "WATCHKEEPER_ALERTMANAGER_TOKEN", basic=basic)
    )


@pytest.fixture
def service(example_config: WatchkeeperConfig, store: Store) -> Iterator[LiveService]:
    with LiveService(example_config, store) as live:
        yield live


def store_predictions(
    store: Store, records: list[PredictionRecord], rules: IntakeRules = DEFAULT_RULES
) -> StoredBatch:
    """One batch of predictions, written as the service's intake writes it."""
    return prediction_writer(rules).store(store, [records])[0]


def store_feedback(
    store: Store, records: list[FeedbackRecord], rules: IntakeRules = DEFAULT_RULES
) -> StoredBatch:
    return feedback_writer(rules).store(store, [records])[0]


def save_predictions(store: Store, records: list) -> StoredBatch:
    """store_predictions with the default rules: default latency buckets, every raw row kept."""
    return store_predictions(store, records)


@pytest.fixture
def standins(tmp_path: Path) -> Iterator[tuple]:
    """Kubernetes with two Deployments and a Service, an HTTP recorder, an SMTP server."""
    from tests.standins import HttpRecorder, KubernetesStandIn, SmtpStandIn

    kube = KubernetesStandIn(
        {("ai", "credit-server"): 2, ("ai", "feature-pipeline"): 1},
        {("ai", "credit-api"): {"app": "credit", "model": "credit_approval"}},
    )
    with kube, HttpRecorder() as http, SmtpStandIn() as smtp:
        yield kube, http, smtp


ALICE_TOKEN = "alice-token-0123456789"
BOB_PASSWORD = "bob's long passphrase"


@pytest.fixture
def people_config(example_config: WatchkeeperConfig, monkeypatch: pytest.MonkeyPatch) -> WatchkeeperConfig:
    """The example with two people: alice, an operator with a token; bob, a viewer with a password."""
    monkeypatch.setenv("WATCHKEEPER_TEST_ALICE_TOKEN", ALICE_TOKEN)
    users = [
        User(name="alice", role="operator", token=SecretRef(env="WATCHKEEPER_TEST_ALICE_TOKEN")),
        User(name="bob", role="viewer", password_hash=hash_password(BOB_PASSWORD)),
    ]
    return example_config.model_copy(update={"users": users})


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager of this test's own (`tests.realstack.alertmanager_at`)."""
    from tests.realstack import alertmanager_at

    with alertmanager_at(tmp_path / "alertmanager") as url:
        yield url
