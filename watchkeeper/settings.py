"""Process settings from the environment (the YAML file holds what operators configure per model)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from watchkeeper.config import WatchkeeperConfig, load_config
from watchkeeper.store import Store

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "examples" / "watchkeeper.yaml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WATCHKEEPER_", extra="ignore")

    home: Path = Field(
        default=Path(".watchkeeper"), description="SQLite store, Evidently workspace, logs, PIDs"
    )
    config: Path = Field(default=DEFAULT_CONFIG, description="The YAML configuration file")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite under home when unset")
    api_token: SecretStr | None = Field(
        default=None, description="Fallback bearer token for every role that has no token of its own"
    )
    intake_token: SecretStr | None = Field(
        default=None, description="Bearer token of the intake: predictions, feedback, pipeline runs"
    )
    alertmanager_token: SecretStr | None = Field(
        default=None, description="Bearer token of the Alertmanager webhook"
    )
    alertmanager_basic_auth: SecretStr | None = Field(
        default=None, description="'user:password' accepted on the Alertmanager webhook"
    )
    operator_token: SecretStr | None = Field(
        default=None, description="Bearer token of operators: reads, the kill switch, approvals"
    )
    token: SecretStr | None = Field(
        default=None,
        description="Your own token, as a configured user: what CLI commands that use the service send "
        "(else WATCHKEEPER_OPERATOR_TOKEN or WATCHKEEPER_API_TOKEN)",
    )
    alertmanager_url: str | None = Field(
        default=None, description="Alertmanager asked about silences before acting (overrides the config)"
    )
    url: str | None = Field(
        default=None, description="The service, for CLI commands that use it (default: the local stack's)"
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus that evaluates the shipped rules: the model report reads each metric's "
        "expected band from it",
    )

    outbox_max_backoff_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait between attempts to start an owed Prefect run"
    )

    @field_validator(
        "api_token",
        "intake_token",
        "alertmanager_token",
        "alertmanager_basic_auth",
        "operator_token",
        "token",
    )
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        """A token set to the empty string would silently turn authentication off: refuse it."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is set but empty: unset it, or give it a value")
        return value

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def credentials(self) -> Credentials:
        value = lambda secret: secret.get_secret_value() if secret else None  # noqa: E731
        fallback = value(self.api_token)
        return Credentials(
            intake=Role("intake", value(self.intake_token), "WATCHKEEPER_INTAKE_TOKEN", fallback),
            alertmanager=Role(
                "alertmanager",
                value(self.alertmanager_token),
                "WATCHKEEPER_ALERTMANAGER_TOKEN",
                fallback,
                basic=value(self.alertmanager_basic_auth),
            ),
            operator=Role("operator", value(self.operator_token), "WATCHKEEPER_OPERATOR_TOKEN", fallback),
        )

    @property
    def webhook_token_value(self) -> str | None:
        """The token Alertmanager presents: written into its rendered configuration."""
        return self.credentials.alertmanager.bearer

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_home / 'watchkeeper.db'}"

    @property
    def logs_dir(self) -> Path:
        return self.resolved_home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.resolved_home / "run"

    @property
    def evidently_workspace(self) -> Path:
        return self.resolved_home / "evidently"

    @cached_property
    def monitoring(self) -> WatchkeeperConfig:
        """The configuration, parsed again only when its file changed (a warm process runs a flow
        every few seconds, each reading its settings afresh)."""
        path = Path(self.config)
        try:
            stat = path.stat()
        except OSError:
            return load_config(path, self.resolved_home)
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(self.resolved_home))
        config = _CONFIGS.get(key)
        if config is None:
            config = load_config(path, self.resolved_home)
            _CONFIGS.clear()
            _CONFIGS[key] = config
        return config

    def ensure_home(self) -> None:
        for folder in (self.resolved_home, self.logs_dir, self.run_dir, self.evidently_workspace):
            folder.mkdir(parents=True, exist_ok=True)

    def open_store(self) -> Store:
        """The process's one store for this URL: the warm executor runs a flow every few seconds,
        and an engine per run would each keep a pool of connections until collected."""
        self.ensure_home()
        with _STORES_LOCK:
            store = _STORES.get(self.store_url)
            if store is None:
                store = _STORES[self.store_url] = Store(self.store_url)
            return store


_STORES: dict[str, Store] = {}
_CONFIGS: dict[tuple[str, int, int, str], WatchkeeperConfig] = {}
_STORES_LOCK = threading.Lock()


@dataclass(frozen=True)
class Role:
    """One role's credentials: its own token, else the shared WATCHKEEPER_API_TOKEN (`fallback`)."""

    name: str
    token: str | None
    variable: str
    fallback: str | None = None
    basic: str | None = None

    @property
    def bearer(self) -> str | None:
        return self.token if self.token is not None else self.fallback

    @property
    def required(self) -> bool:
        return self.bearer is not None or self.basic is not None

    def identity(self, scheme: str, user: str | None = None) -> str:
        """Who a request was, as the audit trail records it: the credential, never the body's word."""
        if scheme == "basic":
            return f"{self.name} (basic {user})"
        if scheme == "bearer":
            source = self.variable if self.token is not None else "WATCHKEEPER_API_TOKEN"
            return f"{self.name} ({source})"
        return f"{self.name} (unauthenticated)"


@dataclass(frozen=True)
class Credentials:
    intake: Role = Role("intake", None, "WATCHKEEPER_INTAKE_TOKEN")
    alertmanager: Role = Role("alertmanager", None, "WATCHKEEPER_ALERTMANAGER_TOKEN")
    operator: Role = Role("operator", None, "WATCHKEEPER_OPERATOR_TOKEN")

    @classmethod
    def shared(cls, token: str | None) -> Credentials:
        """Every role on one token, as WATCHKEEPER_API_TOKEN alone configures it."""
        return cls(
            Role("intake", None, "WATCHKEEPER_INTAKE_TOKEN", token),
            Role("alertmanager", None, "WATCHKEEPER_ALERTMANAGER_TOKEN", token),
            Role("operator", None, "WATCHKEEPER_OPERATOR_TOKEN", token),
        )

    @property
    def complete(self) -> bool:
        return all(role.required for role in (self.intake, self.alertmanager, self.operator))
