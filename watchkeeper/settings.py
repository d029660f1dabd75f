"""Process settings from the environment (the YAML file holds what operators configure per model)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
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
    api_token: SecretStr | None = Field(default=None, description="Bearer token required on every POST")
    alertmanager_token: SecretStr | None = Field(
        default=None, description="Bearer token for the Alertmanager webhook (default: the API token)"
    )
    alertmanager_basic_auth: SecretStr | None = Field(
        default=None, description="'user:password' accepted on the Alertmanager webhook"
    )

    outbox_max_backoff_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait between attempts to start an owed Prefect run"
    )

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def api_token_value(self) -> str | None:
        return self.api_token.get_secret_value() if self.api_token else None

    @property
    def webhook_token_value(self) -> str | None:
        return self.alertmanager_token.get_secret_value() if self.alertmanager_token else self.api_token_value

    @property
    def webhook_basic_value(self) -> str | None:
        return self.alertmanager_basic_auth.get_secret_value() if self.alertmanager_basic_auth else None

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
        return load_config(self.config)

    def ensure_home(self) -> None:
        for folder in (self.resolved_home, self.logs_dir, self.run_dir, self.evidently_workspace):
            folder.mkdir(parents=True, exist_ok=True)

    def open_store(self) -> Store:
        self.ensure_home()
        return Store(self.store_url)
