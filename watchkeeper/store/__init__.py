"""The durable store: one SQLAlchemy engine, sessions for reading and writing, migrations.

SQLite runs in WAL mode so scrapes read while the intake writes. Its write transactions start
with `BEGIN IMMEDIATE`: a deferred transaction that reads, then writes, fails at once with
"database is locked" when another writer got in between, whereas an immediate one waits its turn
(busy_timeout).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
# JSON columns without the spaces `json.dumps` puts after separators: 17 bytes of a drift sample's
# nine features (about 6 % of its row).
compact_json = functools.partial(json.dumps, separators=(",", ":"))
SQLITE_BUSY_TIMEOUT_MS = 30_000
IDEMPOTENT_ATTEMPTS = 3
# Arbitrary constant naming the migration lock on PostgreSQL.
MIGRATION_LOCK = 7_246_000
T = TypeVar("T")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("watchkeeper_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class _SqliteWriters:
    """The writers of one SQLite database take turns here: this process's threads on a lock, and
    processes on an exclusive `flock` of a file beside the database.

    SQLite takes one writer at a time, and a writer that finds the database locked sleeps in steps
    of up to 100 ms before it tries again. Forty threads of a busy service would spend their time
    asleep while the lock sits free, and another process (the executor acting on an alert) would
    rarely find the gap between two of the service's transactions. Waiting here, each writer is
    woken the moment the previous one commits. The kernel drops the `flock` of a process that dies.

    Bulk writers (the intake's group commits) give way: while another writer waits for its turn,
    in any process, no bulk transaction starts. Waiting writers hold a shared `flock` of a second
    file until their turn comes; a bulk writer takes that file exclusively, for an instant, before
    it queues. Acting on an alert waits for the one group being written, not for every group the
    intake would start meanwhile.
    """

    def __init__(self, database: Path | None) -> None:
        self._path = database.with_name(database.name + ".writers") if database else None
        self._fds: dict[str, int] = {}
        self.forget_parent()

    def forget_parent(self) -> None:
        """In a forked child: locks of its own, and file descriptions of its own on first use.
        The inherited descriptors share the parent's `flock`s (closing them keeps the parent's)."""
        self._threads = threading.RLock()
        self._waiters = threading.Condition()
        self._opening = threading.Lock()
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        self._depth, self._owner, self._waiting = 0, 0, 0

    def _fd(self, role: str) -> int:
        """A file description per role, so that their `flock`s conflict even within one process:
        `turn` (the writer's turn), `waiting` (held shared by waiting writers) and `bulk` (the
        bulk writer's exclusive look at the same file). Opened under a lock: two threads opening
        the same role at once would each lock their own description and unlock the other's."""
        with self._opening:
            if role not in self._fds:
                assert self._path is not None
                path = self._path if role == "turn" else self._path.with_name(self._path.name + ".waiting")
                self._fds[role] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            return self._fds[role]

    @contextmanager
    def turn(self, bulk: bool = False) -> Iterator[None]:
        """This thread's turn to write; a nested transaction of the writer keeps it. `_owner` is
        the thread holding the turn, set and cleared by that thread alone."""
        if self._path is not None and self._owner != threading.get_ident():
            if bulk:
                self._take_bulk_turn()
            else:
                self._announce(+1)
                try:
                    self._take_turn()
                finally:
                    self._announce(-1)
        else:
            self._threads.acquire()
            self._depth += 1
        try:
            yield
        finally:
            self._end_turn()

    def _take_turn(self) -> None:
        self._threads.acquire()
        fcntl.flock(self._fd("turn"), fcntl.LOCK_EX)
        self._owner, self._depth = threading.get_ident(), 1

    def _end_turn(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._path is not None:
            self._owner = 0
            fcntl.flock(self._fd("turn"), fcntl.LOCK_UN)
        self._threads.release()

    def _take_bulk_turn(self) -> None:
        """A bulk writer's turn, taken only while no other writer waits: one that began to wait
        after this writer queued (the other bulk writers queued too, and the service has one for
        each kind of record) is let go first, so it waits for one group, not for every group ahead."""
        while True:
            self._give_way()
            self._take_turn()
            if self._no_one_waiting(wait=False):
                return
            self._end_turn()

    def _no_one_waiting(self, wait: bool) -> bool:
        """Whether no writer of any process waits (none holds the shared `flock` of the waiting
        file): the bulk writer's exclusive look at it, for an instant; `wait`: until there is none."""
        look = self._fd("bulk")
        try:
            fcntl.flock(look, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(look, fcntl.LOCK_UN)
        return True

    def _announce(self, change: int) -> None:
        """This process's writers waiting for a turn: the first takes the shared `flock`, the last
        drops it."""
        with self._waiters:
            self._waiting += change
            if change > 0 and self._waiting == 1:
                fcntl.flock(self._fd("waiting"), fcntl.LOCK_SH)
            elif self._waiting == 0:
                fcntl.flock(self._fd("waiting"), fcntl.LOCK_UN)
                self._waiters.notify_all()

    def _give_way(self) -> None:
        """A bulk writer waits until no writer of this process, nor of any other, is waiting."""
        with self._waiters:
            self._waiters.wait_for(lambda: self._waiting == 0)
        self._no_one_waiting(wait=True)


_SQLITE_WRITERS: dict[str, _SqliteWriters] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


def _forget_parents_writers() -> None:
    """A forked child inherits locks held by threads it does not have: it starts afresh."""
    global _SQLITE_WRITERS_GUARD
    _SQLITE_WRITERS_GUARD = threading.Lock()
    for writers in _SQLITE_WRITERS.values():
        writers.forget_parent()


os.register_at_fork(after_in_child=_forget_parents_writers)


def _sqlite_writers(database: str | None) -> _SqliteWriters:
    """One turn-taking per database file and process, whichever `Store` objects open it."""
    file = Path(database).resolve() if database and database != ":memory:" else None
    with _SQLITE_WRITERS_GUARD:
        return _SQLITE_WRITERS.setdefault(str(file), _SqliteWriters(file))


def insert_for(session: Session) -> Callable[..., Any]:
    """The session's dialect's INSERT, whose ON CONFLICT clauses both back ends understand."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


class Store:
    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        if self.url.get_backend_name() == "sqlite" and self.url.database:
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(self.url, pool_pre_ping=True, json_serializer=compact_json)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(watchkeeper_write=True), expire_on_commit=False
        )
        self._sqlite_writers = _sqlite_writers(self.url.database) if self.is_sqlite else None

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    @contextmanager
    def writing(self, bulk: bool = False) -> Iterator[Session]:
        """A transaction that commits on success and rolls back whole on any error. On SQLite, a
        `bulk` one (the intake's) gives way to the other writers waiting (see `_SqliteWriters`)."""
        turn = self._sqlite_writers.turn(bulk) if self._sqlite_writers else nullcontext()
        with turn, self._writer() as session, session.begin():
            yield session

    def write_idempotently(self, write: Callable[[Session], T], bulk: bool = False) -> T:
        """Run `write` in one transaction, again when a concurrent writer won a unique-key race.

        Idempotent writes look up what exists, then insert the rest; a concurrent transaction may
        insert the same key in between, and the unique constraint refuses ours. The retry sees the
        other's rows and skips them.
        """
        for attempt in range(1, IDEMPOTENT_ATTEMPTS + 1):
            try:
                with self.writing(bulk) as session:
                    return write(session)
            except IntegrityError:
                if attempt == IDEMPOTENT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    @staticmethod
    def _alembic_config() -> Config:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        return config

    def upgrade(self, target: str = "head") -> str:
        """Apply every pending migration (up to `target`); returns the revision the store is at.

        Replicas and the executor start together and each upgrades: the upgrade runs
        under a lock (a transaction-scoped advisory lock on PostgreSQL, SQLite's write lock taken by
        `BEGIN IMMEDIATE`), so one applies the migrations and the others then find the store at head.
        """
        config = self._alembic_config()
        with self.engine.execution_options(watchkeeper_write=True).begin() as connection:
            if not self.is_sqlite:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, target)
        return self.current_revision() or ""

    def current_revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def head_revision() -> str | None:
        return ScriptDirectory.from_config(Store._alembic_config()).get_current_head()

    def dispose(self) -> None:
        self.engine.dispose()
