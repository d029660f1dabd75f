"""A throwaway PostgreSQL cluster on 127.0.0.1 for the tests and the benchmarks.

PostgreSQL refuses to run as root, and CI is root: the cluster's folder is given to the `postgres`
user and initdb and pg_ctl (Debian keeps them in /usr/lib/postgresql/<version>/bin, off the PATH)
run as that user. fsync is off: the cluster is thrown away.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from watchkeeper.runtime.host import free_port


class PostgresMissing(RuntimeError):
    pass


def as_postgres_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def postgres_bin() -> Path | None:
    """Where initdb and pg_ctl are: on the PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name),
        reverse=True,
    )
    return versions[0].parent if versions else None


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a cluster on a free loopback port; yield its admin URL; stop and delete it after."""
    binaries = postgres_bin()
    if binaries is None:
        raise PostgresMissing("PostgreSQL is not installed (initdb, pg_ctl): `make test` installs it as root")
    initdb, pg_ctl = str(binaries / "initdb"), str(binaries / "pg_ctl")
    folder = Path(tempfile.mkdtemp(prefix="watchkeeper-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    subprocess.run(
        as_postgres_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
    subprocess.run(
        as_postgres_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


def new_database(cluster_url: str) -> str:
    """A fresh, empty database on the cluster."""
    name = f"wk_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{cluster_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{cluster_url}/{name}"
