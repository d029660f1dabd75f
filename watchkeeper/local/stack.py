"""The local stack behind `watchkeeper up`, `down` and `status`.

Each component is started in its own session (process group) with its output in
`WATCHKEEPER_HOME/logs/<name>.log` and a PID record in `WATCHKEEPER_HOME/run/<name>.json`.
`down` stops exactly the processes recorded there, checking that the PID still belongs to the
process we started (its start time) before signalling its group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Literal

import httpx
import yaml

from watchkeeper.runtime.host import BIN, free_port, healthy, start_ticks
from watchkeeper.settings import REPO_ROOT, Settings

INFRA = REPO_ROOT / "infra"
STOP_GRACE_SECONDS = 15.0
PREFECT_HISTORY = timedelta(days=7)
# Prometheus keeps the latency buckets' exemplars (a traced request per bucket: a slow bucket's trace).
EXEMPLAR_STORAGE = "--enable-feature=exemplar-storage"
# The node exporter's collectors the host rules and dashboard read (CPU, memory, filesystems), and
# load, disk and network for the person looking at the host; the rest cost scrapes for nothing.
NODE_COLLECTORS = ("cpu", "meminfo", "filesystem", "loadavg", "diskstats", "netdev", "vmstat", "uname")


@dataclass(frozen=True)
class Ports:
    prefect: int = 4200
    service: int = 8765
    prometheus: int = 9090
    alertmanager: int = 9093
    notifications: int = 9601
    node_exporter: int = 9100


DEFAULT_PORTS = Ports()


def free_ports() -> dict[str, int]:
    """A free loopback port for each component, by the name of its `up` option (`--<name>-port`)."""
    return {port.name.replace("_", "-"): free_port() for port in fields(Ports)}


@dataclass
class Component:
    name: str
    argv: list[str]
    health_url: str | None
    urls: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    readiness: Literal["health", "deployments", "started", "probe"] = "health"
    ready_timeout: float = 60.0
    missing_hint: str | None = None
    # readiness "probe": true once the component answers (a database, a cache: no HTTP health URL)
    probe: Callable[[], bool] | None = None
    # run once the component is ready, before the next one starts (databases, migrations)
    after_ready: Callable[[], None] | None = None

    @property
    def available(self) -> bool:
        return shutil.which(self.argv[0]) is not None or Path(self.argv[0]).exists()


def node_exporter_argv(address: str) -> list[str]:
    """Debian's node exporter on `address`, with only the collectors of NODE_COLLECTORS."""
    return [
        "prometheus-node-exporter",
        f"--web.listen-address={address}",
        "--collector.disable-defaults",
        *(f"--collector.{name}" for name in NODE_COLLECTORS),
    ]


def render_prometheus_config(
    out_dir: Path, service: str, prometheus: str, alertmanager: str, node_exporter: str | None = None
) -> Path:
    """infra/prometheus/prometheus.yml with these host:port targets and absolute rule paths (without
    a node exporter, without the host's job)."""
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(INFRA / "prometheus" / pattern) for pattern in config.get("rule_files", [])]
    for alerting in config.get("alerting", {}).get("alertmanagers", []):
        for static in alerting.get("static_configs", []):
            static["targets"] = [alertmanager]
    targets = {"watchkeeper": service, "prometheus": prometheus, "node": node_exporter}
    unscraped = {name for name, target in targets.items() if target is None}
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] not in unscraped]
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            static["targets"] = [targets.get(job["job_name"], target) for target in static["targets"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "prometheus.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def render_alertmanager_config(out_dir: Path, webhook_url: str, token: str | None) -> Path:
    """infra/alertmanager/alertmanager.yml sending to this Watchkeeper webhook.

    With a token, it goes to secrets/watchkeeper-token (mode 0600) beside the config, where the
    receiver's credentials_file points; without one, the receiver sends no Authorization header.
    """
    config = yaml.safe_load((INFRA / "alertmanager" / "alertmanager.yml").read_text())
    secrets = out_dir / "secrets"
    secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
    for receiver in config["receivers"]:
        if receiver["name"] != "watchkeeper":
            continue
        for webhook in receiver["webhook_configs"]:
            webhook["url"] = webhook_url
            if token is None:
                webhook.pop("http_config", None)
    if token is not None:
        token_file = secrets / "watchkeeper-token"
        token_file.touch(mode=0o600)
        token_file.write_text(token)
    out = out_dir / "alertmanager.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


@dataclass(frozen=True)
class PidRecord:
    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    urls: dict[str, str]
    health_url: str | None

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start_ticks

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


@contextmanager
def recorded_on_local_stack(settings: Settings) -> Iterator[str | None]:
    """Flows that a command runs in its own process are recorded on the local stack's Prefect server
    (seen in its UI; with `up --ha`, behind its load balancer) when it is running and PREFECT_API_URL
    is unset; otherwise Prefect would start a throwaway server of its own. Yields the API used, None
    for Prefect's default."""
    names = ("prefect-server", "load-balancer")
    records = (PidRecord.load(settings.run_dir / f"{name}.json") for name in names)
    alive = [r for r in records if r is not None and r.alive() and "Prefect UI" in r.urls]
    ui = alive[0].urls["Prefect UI"] if alive else None
    if os.environ.get("PREFECT_API_URL") or ui is None:
        yield os.environ.get("PREFECT_API_URL")
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"{ui}/api"}):
        yield f"{ui}/api"


class Stack:
    def __init__(self, settings: Settings, ports: Ports = DEFAULT_PORTS, demo_traffic: bool = False) -> None:
        self.settings = settings
        self.ports = ports
        self.demo_traffic = demo_traffic
        self.external_prefect = os.environ.get("PREFECT_API_URL")

    @property
    def prefect_api_url(self) -> str:
        return self.external_prefect or f"http://127.0.0.1:{self.ports.prefect}/api"

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.service}"

    @property
    def notifications_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.notifications}"

    def _base_env(self) -> dict[str, str]:
        return {
            "WATCHKEEPER_HOME": str(self.settings.resolved_home),
            "WATCHKEEPER_CONFIG": str(self.settings.config.resolve()),
            "PREFECT_API_URL": self.prefect_api_url,
            "WATCHKEEPER_ALERTMANAGER_URL": f"http://127.0.0.1:{self.ports.alertmanager}",
            "WATCHKEEPER_PROMETHEUS_URL": f"http://127.0.0.1:{self.ports.prometheus}",
            "WATCHKEEPER_URL": self.service_url,
            # The notification sink stands in for Slack and PagerDuty unless real ones are named.
            "WATCHKEEPER_SLACK_WEBHOOK_URL": os.environ.get(
                "WATCHKEEPER_SLACK_WEBHOOK_URL", f"{self.notifications_url}/slack/watchkeeper-demo"
            ),
            "WATCHKEEPER_PAGERDUTY_ROUTING_KEY": os.environ.get(
                "WATCHKEEPER_PAGERDUTY_ROUTING_KEY", "watchkeeper-demo-routing-key"
            ),
            "PREFECT_HOME": str(self.settings.resolved_home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Prefect's own history (the 15-second schedules make ~5,800 flow runs a day) is vacuumed
            # by its server, not by Watchkeeper: flow runs and events older than a week.
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(int(PREFECT_HISTORY.total_seconds())),
            "DO_NOT_TRACK": "1",
        }

    def components(self) -> list[Component]:
        home = self.settings.resolved_home
        ports = self.ports
        components = []
        if self.external_prefect is None:
            components.append(
                Component(
                    "prefect-server",
                    [
                        str(BIN / "prefect"),
                        "server",
                        "start",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(ports.prefect),
                    ],
                    health_url=f"http://127.0.0.1:{ports.prefect}/api/health",
                    urls={"Prefect UI": f"http://127.0.0.1:{ports.prefect}"},
                    env={"PREFECT_UI_API_URL": f"http://127.0.0.1:{ports.prefect}/api"},
                )
            )
        components += [
            Component(
                "notification-sink",
                [
                    str(BIN / "watchkeeper"),
                    "notification-sink",
                    "--port",
                    str(ports.notifications),
                    "--log",
                    str(home / "notifications.jsonl"),
                ],
                health_url=f"{self.notifications_url}/healthz",
                urls={"Notifications (Slack, PagerDuty stand-in)": f"{self.notifications_url}/messages"},
            ),
            Component(
                "service",
                [str(BIN / "watchkeeper"), "serve", "--host", "127.0.0.1", "--port", str(ports.service)],
                health_url=f"{self.service_url}/healthz",
                urls={
                    "Watchkeeper API": f"{self.service_url}/docs",
                    "Incidents": f"{self.service_url}/ui/incidents",
                    "Metrics": f"{self.service_url}/metrics",
                },
            ),
            Component(
                "executor",
                [str(BIN / "watchkeeper"), "executor"],
                health_url=None,
                urls={},
                readiness="deployments",
                ready_timeout=120.0,
            ),
            Component(
                "alertmanager",
                [
                    "prometheus-alertmanager",
                    f"--config.file={home / 'alertmanager' / 'alertmanager.yml'}",
                    f"--storage.path={home / 'alertmanager'}",
                    f"--web.listen-address=127.0.0.1:{ports.alertmanager}",
                    "--cluster.listen-address=",
                ],
                health_url=f"http://127.0.0.1:{ports.alertmanager}/-/ready",
                urls={"Alertmanager": f"http://127.0.0.1:{ports.alertmanager}"},
                missing_hint="sudo apt-get install prometheus-alertmanager",
            ),
            Component(
                "node-exporter",
                node_exporter_argv(f"127.0.0.1:{ports.node_exporter}"),
                health_url=f"http://127.0.0.1:{ports.node_exporter}/metrics",
                urls={"Host metrics (node exporter)": f"http://127.0.0.1:{ports.node_exporter}/metrics"},
                missing_hint="sudo apt-get install prometheus-node-exporter",
            ),
            Component(
                "prometheus",
                [
                    "prometheus",
                    f"--config.file={home / 'prometheus' / 'prometheus.yml'}",
                    f"--storage.tsdb.path={home / 'prometheus' / 'data'}",
                    f"--web.listen-address=127.0.0.1:{ports.prometheus}",
                    EXEMPLAR_STORAGE,
                ],
                health_url=f"http://127.0.0.1:{ports.prometheus}/-/ready",
                urls={"Prometheus": f"http://127.0.0.1:{ports.prometheus}"},
                missing_hint="sudo apt-get install prometheus",
            ),
        ]
        if self.demo_traffic:
            components += [
                Component(
                    name,
                    [
                        str(BIN / "watchkeeper"),
                        "demo-traffic",
                        "--url",
                        self.service_url,
                        "--rate",
                        "20",
                        *model,
                    ],
                    health_url=None,
                    urls={},
                    readiness="started",
                )
                for name, model in self._demo_generators()
            ]
        return components

    def _demo_generators(self) -> list[tuple[str, list[str]]]:
        """One demo generator per configured model of the example's: the credit classifier
        (`demo-traffic`, as before), and the demand forecast and recommendations when configured."""
        names = {m.name for m in self.settings.monitoring.models}
        found = [("demo-traffic", [])] if "credit_approval" in names else []
        return found + [
            (f"demo-traffic-{name}", ["--model", name])
            for name in ("demand_forecast", "product_recommendations")
            if name in names
        ]

    def pid_path(self, name: str) -> Path:
        return self.settings.run_dir / f"{name}.json"

    def record(self, name: str) -> PidRecord | None:
        return PidRecord.load(self.pid_path(name))

    def render_configs(self) -> None:
        home = self.settings.resolved_home
        render_prometheus_config(
            home / "prometheus",
            service=f"127.0.0.1:{self.ports.service}",
            prometheus=f"127.0.0.1:{self.ports.prometheus}",
            alertmanager=f"127.0.0.1:{self.ports.alertmanager}",
            node_exporter=f"127.0.0.1:{self.ports.node_exporter}",
        )
        render_alertmanager_config(
            home / "alertmanager", f"{self.service_url}/v1/alertmanager", self.settings.webhook_token_value
        )

    def start(self, component: Component) -> PidRecord:
        log = (self.settings.logs_dir / f"{component.name}.log").open("ab")
        env = {**os.environ, **self._base_env(), **component.env}
        process = subprocess.Popen(
            component.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        log.close()
        ticks = start_ticks(process.pid)
        record = PidRecord(
            component.name, process.pid, ticks or 0, component.argv, component.urls, component.health_url
        )
        self.pid_path(component.name).write_text(json.dumps(record.__dict__, indent=2))
        return record

    def wait_ready(self, component: Component, record: PidRecord) -> None:
        deadline = time.monotonic() + component.ready_timeout
        checks: dict[str, Callable[[], bool]] = {
            "health": lambda: healthy(component.health_url),
            "deployments": self._deployments_ready,
            "started": lambda: True,
            "probe": lambda: component.probe is not None and component.probe(),
        }
        log = self.settings.logs_dir / f"{component.name}.log"
        while time.monotonic() < deadline:
            if not record.alive():
                raise RuntimeError(f"{component.name} exited during start-up; see {log}")
            if checks[component.readiness]():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{component.name} was not ready after {component.ready_timeout:.0f} s")

    def _deployments_ready(self) -> bool:
        from deployments.serve import DEPLOYMENT_NAMES

        try:
            response = httpx.post(f"{self.prefect_api_url}/deployments/filter", json={}, timeout=5)
        except httpx.HTTPError:
            return False
        found = {d["name"] for d in response.json()} if response.status_code == 200 else set()
        return set(DEPLOYMENT_NAMES) <= found

    def stop(self, name: str) -> str:
        record = self.record(name)
        if record is None:
            return "not started by watchkeeper"
        outcome = "already stopped"
        if record.alive():
            os.killpg(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while record.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if record.alive():
                os.killpg(record.pid, signal.SIGKILL)
                outcome = "killed after the grace period"
            else:
                outcome = "stopped"
        self.pid_path(name).unlink(missing_ok=True)
        return outcome

    def up(self, report: Callable[[str, str], None]) -> None:
        """Start, in dependency order, every component that is not already running. When one does not
        come up, the components this call started are stopped again (their logs stay), so that a
        failed `up` leaves no half stack running that nobody will stop."""
        self.settings.ensure_home()
        self.render_configs()
        started: list[str] = []
        try:
            for component in self.components():
                if not self._startable(component, report):
                    continue
                record = self.start(component)
                started.append(component.name)
                self.wait_ready(component, record)
                if component.after_ready is not None:
                    component.after_ready()
                report(component.name, f"started (pid {record.pid})")
        except BaseException:
            for name in reversed(started):
                report(name, f"{self.stop(name)}: the stack did not come up")
            raise

    def _startable(self, component: Component, report: Callable[[str, str], None]) -> bool:
        """False, and says why, when `component` runs already or is not installed."""
        record = self.record(component.name)
        if record is not None and record.alive():
            report(component.name, f"already running (pid {record.pid})")
            return False
        if component.health_url and healthy(component.health_url):
            report(component.name, f"already running, not started by watchkeeper ({component.health_url})")
            return False
        if not component.available:
            report(
                component.name,
                f"not started: {component.argv[0]} is not installed ({component.missing_hint})",
            )
            return False
        return True

    def down(self, report: Callable[[str, str], None]) -> None:
        for name in reversed(self.all_names()):
            if self.pid_path(name).exists():
                report(name, self.stop(name))

    def all_names(self) -> list[str]:
        recorded = (
            sorted(p.stem for p in self.settings.run_dir.glob("*.json"))
            if self.settings.run_dir.exists()
            else []
        )
        names = [c.name for c in self.components()]
        return names + [n for n in recorded if n not in names]


@contextmanager
def service_process(
    database_url: str, home: Path, ready_within: float = 60.0, port: int | None = None
) -> Iterator[subprocess.Popen]:
    """`watchkeeper serve`, in a process of its own on a loopback port (a free one by default),
    its store upgraded first; yields the process (its URL in `.url`) and stops it after."""
    port = port or free_port()
    env = {**os.environ, "WATCHKEEPER_DATABASE_URL": database_url, "WATCHKEEPER_HOME": str(home)}
    watchkeeper = str(BIN / "watchkeeper")
    subprocess.run([watchkeeper, "db", "upgrade"], env=env, check=True, capture_output=True)
    service = subprocess.Popen(
        [watchkeeper, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    service.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + ready_within
        while not healthy(f"{service.url}/healthz"):  # type: ignore[attr-defined]
            if time.monotonic() > deadline or service.poll() is not None:
                raise RuntimeError("the service did not start")
            time.sleep(0.2)
        yield service
    finally:
        service.terminate()
        service.wait(timeout=30)
