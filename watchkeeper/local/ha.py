"""`watchkeeper up --ha`: two of every process on loopback, on the engines production uses.

- PostgreSQL holds the store and Prefect's database; Redis carries Prefect's messaging, cache,
  leases and background-service coordination (`prefect-redis`, Prefect's self-hosted HA guide).
- Prefect's migrations run once, before its two API servers (`--no-services`) start; one process
  runs its background services (the scheduler among them).
- HAProxy is the load balancer: the Prefect API and the Watchkeeper service each keep their usual
  port there, in front of two replicas checked by their health endpoints.
- Two services and two warm executors share the store; their claims make every action happen once.
- Two Alertmanagers gossip as a cluster; two Prometheus servers send every alert to both, with
  their `replica` label dropped so that both send the same alert.
- Prometheus scrapes the store's metrics once, through the load balancer (`/metrics/store`, alike
  from every replica), and each replica's own request counters (`/metrics/process`), so that a
  sum never doubles with the replicas.

Ports other than the public ones are picked free on the first `up --ha` and kept, with the
PostgreSQL data folder, in `ha/topology.json`: a replica restarted takes its old port back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from watchkeeper.local.pgtemp import as_postgres_user, postgres_bin
from watchkeeper.local.stack import (
    DEFAULT_PORTS,
    EXEMPLAR_STORAGE,
    INFRA,
    STOP_GRACE_SECONDS,
    Component,
    Ports,
    Stack,
    render_alertmanager_config,
)
from watchkeeper.runtime.host import BIN, free_port, start_ticks
from watchkeeper.settings import Settings

TOPOLOGY_FILE = "topology.json"
REPLICAS = 2
STORE_DATABASE, PREFECT_DATABASE = "watchkeeper", "prefect"


@dataclass(frozen=True)
class Topology:
    """Where each replica listens, and where PostgreSQL keeps its data."""

    postgres: int
    postgres_dir: str
    redis: int
    prefect_apis: list[int]
    services: list[int]
    prometheus: list[int]
    alertmanagers: list[int]
    gossip: list[int]

    @classmethod
    def kept_or_new(cls, folder: Path, ports: Ports) -> Topology:
        path = folder / TOPOLOGY_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            pass
        topology = cls(
            postgres=free_port(),
            postgres_dir=str(_postgres_folder(folder)),
            redis=free_port(),
            prefect_apis=[free_port() for _ in range(REPLICAS)],
            services=[free_port() for _ in range(REPLICAS)],
            prometheus=[ports.prometheus, free_port()],
            alertmanagers=[ports.alertmanager, free_port()],
            gossip=[free_port() for _ in range(REPLICAS)],
        )
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(topology), indent=2))
        return topology


def _postgres_folder(folder: Path) -> Path:
    """PostgreSQL runs as `postgres`, never root: as root, its folder is one `postgres` can reach
    (a home under /root is closed to it), named after the home."""
    if os.geteuid() != 0:
        return folder / "postgres"
    return Path("/var/tmp") / f"watchkeeper-ha-{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class HaStack(Stack):
    """The local stack with two of every process (see the module's docstring)."""

    def __init__(self, settings: Settings, ports: Ports = DEFAULT_PORTS, demo_traffic: bool = False) -> None:
        super().__init__(settings, ports, demo_traffic)
        self.topology = Topology.kept_or_new(settings.resolved_home / "ha", ports)
        self.external_prefect = None

    @property
    def store_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.topology.postgres}/{STORE_DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.topology.postgres}/postgres"

    @property
    def prefect_database_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.topology.postgres}/{PREFECT_DATABASE}"

    def _base_env(self) -> dict[str, str]:
        return {**super()._base_env(), "WATCHKEEPER_DATABASE_URL": self.store_url}

    def prefect_env(self) -> dict[str, str]:
        """Prefect's server settings for API replicas on PostgreSQL and Redis (its HA guide)."""
        redis = str(self.topology.redis)
        return {
            "PREFECT_API_DATABASE_CONNECTION_URL": self.prefect_database_url,
            "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
            "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
            "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
            "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
            "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
            "PREFECT_REDIS_MESSAGING_PORT": redis,
            "PREFECT_REDIS_MESSAGING_DB": "0",
            "PREFECT_SERVER_DOCKET_URL": f"redis://127.0.0.1:{redis}/1",
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{self.ports.prefect}/api",
        }

    @property
    def ha_dir(self) -> Path:
        return self.settings.resolved_home / "ha"

    def components(self) -> list[Component]:
        shared = super().components()  # the notification sink and the demo generators, as they are
        return [
            self._postgres(),
            self._redis(),
            *self._prefect(),
            self._load_balancer(),
            *[c for c in shared if c.name in ("notification-sink", "node-exporter")],
            *self._services(),
            *self._executors(),
            *self._alertmanagers(),
            *self._prometheus(),
            *[c for c in shared if c.name.startswith("demo-traffic")],
        ]

    def _postgres(self) -> Component:
        binaries = postgres_bin()
        folder = Path(self.topology.postgres_dir)
        argv = [
            str(binaries / "postgres") if binaries else "postgres",
            "-D",
            str(folder / "data"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.topology.postgres),
            "-k",
            str(folder),
        ]
        return Component(
            "postgres",
            as_postgres_user(argv),
            health_url=None,
            urls={"PostgreSQL": self.store_url.replace("+psycopg", "")},
            readiness="probe",
            probe=self._postgres_accepts,
            after_ready=self._prepare_databases,
            missing_hint="sudo apt-get install postgresql",
        )

    def _postgres_accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_url, connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def ensure_cluster(self) -> None:
        """initdb on the first `up --ha` (trust on loopback: a local topology, never production)."""
        binaries = postgres_bin()
        data = Path(self.topology.postgres_dir) / "data"
        if binaries is None or (data / "PG_VERSION").exists():
            return
        folder = data.parent
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        subprocess.run(
            as_postgres_user(
                [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, name: str) -> str:
        """As for any component, but PostgreSQL is first asked for a fast shutdown (SIGINT to its
        postmaster: it ends the sessions, checkpoints and exits), which is waited for: the group's
        SIGTERM would also reach its own helper processes, and a restart could find the port, the
        lock file or the shared memory still held."""
        shut_down = name == "postgres" and self._stop_postmaster()
        outcome = super().stop(name)
        return "stopped" if shut_down and outcome == "already stopped" else outcome

    def _stop_postmaster(self) -> bool:
        """True when a running postmaster was asked to stop."""
        pid_file = Path(self.topology.postgres_dir) / "data" / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if start_ticks(postmaster) is None:
            return False
        os.kill(postmaster, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while start_ticks(postmaster) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        return True

    def _prepare_databases(self) -> None:
        """The store's and Prefect's databases, and their migrations, once, before any replica."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            present = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
            for name in (STORE_DATABASE, PREFECT_DATABASE):
                if name not in present:
                    connection.execute(f'CREATE DATABASE "{name}"')
        env = {**os.environ, **self._base_env(), **self.prefect_env()}
        for argv in (
            [str(BIN / "watchkeeper"), "db", "upgrade"],
            [str(BIN / "prefect"), "server", "database", "upgrade", "-y"],
        ):
            subprocess.run(argv, env=env, check=True, capture_output=True, cwd=self.settings.resolved_home)

    def _redis(self) -> Component:
        port = self.topology.redis
        return Component(
            "redis",
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.ha_dir),
            ],
            health_url=None,
            urls={"Redis": f"redis://127.0.0.1:{port}"},
            readiness="probe",
            probe=lambda: _answers(port),
            missing_hint="sudo apt-get install redis-server",
        )

    def _prefect(self) -> list[Component]:
        env = self.prefect_env()
        apis = [
            Component(
                f"prefect-api-{i}",
                [str(BIN / "prefect"), "server", "start", "--no-services", "--host", "127.0.0.1"]
                + ["--port", str(port)],
                health_url=f"http://127.0.0.1:{port}/api/health",
                urls={f"Prefect API {i}": f"http://127.0.0.1:{port}/api"},
                env=env,
                ready_timeout=120.0,
            )
            for i, port in enumerate(self.topology.prefect_apis, start=1)
        ]
        services = Component(
            "prefect-services",
            [str(BIN / "prefect"), "server", "services", "start"],
            health_url=None,
            urls={},
            env=env,
            readiness="started",
        )
        return [*apis, services]

    def _load_balancer(self) -> Component:
        return Component(
            "load-balancer",
            ["haproxy", "-db", "-f", str(self.ha_dir / "haproxy.cfg")],
            health_url=f"{self.prefect_api_url}/health",
            urls={
                "Prefect UI": f"http://127.0.0.1:{self.ports.prefect}",
                "Watchkeeper API": f"{self.service_url}/docs",
            },
            missing_hint="sudo apt-get install haproxy",
        )

    def _services(self) -> list[Component]:
        return [
            Component(
                f"service-{i}",
                [str(BIN / "watchkeeper"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                health_url=f"http://127.0.0.1:{port}/healthz",
                urls={f"Service {i}": f"http://127.0.0.1:{port}/metrics/process"},
            )
            for i, port in enumerate(self.topology.services, start=1)
        ]

    def _executors(self) -> list[Component]:
        return [
            Component(
                f"executor-{i}",
                [str(BIN / "watchkeeper"), "executor"],
                health_url=None,
                urls={},
                readiness="deployments",
                ready_timeout=180.0,
            )
            for i in range(1, REPLICAS + 1)
        ]

    def _alertmanagers(self) -> list[Component]:
        home = self.settings.resolved_home
        gossip = self.topology.gossip
        return [
            Component(
                f"alertmanager-{i}",
                [
                    "prometheus-alertmanager",
                    f"--config.file={home / 'alertmanager' / 'alertmanager.yml'}",
                    f"--storage.path={home / f'alertmanager-{i}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--cluster.listen-address=127.0.0.1:{gossip[i - 1]}",
                    f"--cluster.advertise-address=127.0.0.1:{gossip[i - 1]}",
                    *[f"--cluster.peer=127.0.0.1:{peer}" for peer in gossip if peer != gossip[i - 1]],
                ],
                health_url=f"http://127.0.0.1:{port}/-/ready",
                urls={f"Alertmanager {i}": f"http://127.0.0.1:{port}"},
                ready_timeout=90.0,
                missing_hint="sudo apt-get install prometheus-alertmanager",
            )
            for i, port in enumerate(self.topology.alertmanagers, start=1)
        ]

    def _prometheus(self) -> list[Component]:
        home = self.settings.resolved_home
        return [
            Component(
                f"prometheus-{i}",
                [
                    "prometheus",
                    f"--config.file={home / f'prometheus-{i}' / 'prometheus.yml'}",
                    f"--storage.tsdb.path={home / f'prometheus-{i}' / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    EXEMPLAR_STORAGE,
                ],
                health_url=f"http://127.0.0.1:{port}/-/ready",
                urls={f"Prometheus {i}": f"http://127.0.0.1:{port}"},
                missing_hint="sudo apt-get install prometheus",
            )
            for i, port in enumerate(self.topology.prometheus, start=1)
        ]

    def render_configs(self) -> None:
        home = self.settings.resolved_home
        self.ha_dir.mkdir(parents=True, exist_ok=True)
        self.ensure_cluster()
        (self.ha_dir / "haproxy.cfg").write_text(self.haproxy_config())
        render_alertmanager_config(
            home / "alertmanager", f"{self.service_url}/v1/alertmanager", self.settings.webhook_token_value
        )
        alertmanagers = [f"127.0.0.1:{port}" for port in self.topology.alertmanagers]
        for i, port in enumerate(self.topology.prometheus, start=1):
            render_ha_prometheus_config(
                home / f"prometheus-{i}",
                replica=str(i),
                load_balanced=f"127.0.0.1:{self.ports.service}",
                services=[f"127.0.0.1:{p}" for p in self.topology.services],
                prometheus=f"127.0.0.1:{port}",
                alertmanagers=alertmanagers,
                node_exporter=f"127.0.0.1:{self.ports.node_exporter}",
            )

    def haproxy_config(self) -> str:
        """Round robin over the replicas that pass their health check (every second, out after two
        failures); a request whose connection failed goes to the other replica. Intake and alert
        webhooks are idempotent (request ids, notification keys), so re-sending one is safe."""

        def servers(prefix: str, ports: list[int]) -> str:
            return "\n".join(f"    server {prefix}{i} 127.0.0.1:{p} check" for i, p in enumerate(ports, 1))

        return f"""# Rendered by `watchkeeper up --ha`.
global
    maxconn 4096

defaults
    mode http
    option redispatch
    retries 3
    retry-on conn-failure empty-response 502 503
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h
    default-server inter 1s fall 2 rise 1

frontend prefect
    bind 127.0.0.1:{self.ports.prefect}
    default_backend prefect_api

backend prefect_api
    balance roundrobin
    option httpchk GET /api/health
{servers("api", self.topology.prefect_apis)}

frontend watchkeeper
    bind 127.0.0.1:{self.ports.service}
    default_backend watchkeeper_services

backend watchkeeper_services
    balance roundrobin
    option httpchk GET /healthz
{servers("service", self.topology.services)}
"""


def render_ha_prometheus_config(
    out_dir: Path,
    replica: str,
    load_balanced: str,
    services: list[str],
    prometheus: str,
    alertmanagers: list[str],
    node_exporter: str,
) -> Path:
    """infra/prometheus/prometheus.yml for one of a pair: its `replica` label dropped from the alerts
    it sends to every Alertmanager, the store's metrics scraped once through the load balancer, each
    service replica's own counters scraped from it, and the host's node exporter."""
    config: dict[str, Any] = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    config["global"]["external_labels"] = {"replica": replica}
    config["rule_files"] = [str(INFRA / "prometheus" / pattern) for pattern in config.get("rule_files", [])]
    config["alerting"] = {
        "alert_relabel_configs": [{"action": "labeldrop", "regex": "replica"}],
        "alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}],
    }
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    store = jobs["watchkeeper"]
    store["metrics_path"] = "/metrics/store"
    store["static_configs"] = [{"targets": [load_balanced]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [prometheus]}]
    replicas = {
        "job_name": "watchkeeper-replicas",
        "metrics_path": "/metrics/process",
        "scrape_interval": store.get("scrape_interval", "5s"),
        "static_configs": [{"targets": services}],
    }
    jobs["node"]["static_configs"][0]["targets"] = [node_exporter]
    config["scrape_configs"] = [store, replicas, jobs["prometheus"], jobs["node"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "prometheus.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def stack_started_last(settings: Settings, ports: Ports = DEFAULT_PORTS, demo_traffic: bool = False) -> Stack:
    """The stack `down` and `status` speak of: the HA topology when `up --ha` started the last one."""
    mode = settings.run_dir / "stack-mode"
    ha = mode.exists() and mode.read_text().strip() == "ha"
    return HaStack(settings, ports, demo_traffic) if ha else Stack(settings, ports, demo_traffic)


def remember_mode(settings: Settings, ha: bool) -> None:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "stack-mode").write_text("ha" if ha else "single")
