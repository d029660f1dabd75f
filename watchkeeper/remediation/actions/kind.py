"""The one small interface every action implements (see the package's docstring), and the context
an action runs with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import httpx

from watchkeeper.config import NotificationTarget, SecretRef, WatchkeeperConfig
from watchkeeper.notifications.calls import request
from watchkeeper.notifications.senders import IncidentSummary
from watchkeeper.secrets import resolve_secret
from watchkeeper.tracing import with_trace_headers


@dataclass
class ActionContext:
    config: WatchkeeperConfig
    incident: IncidentSummary
    timeout: float

    @cached_property
    def kubernetes(self) -> Any:
        from kubernetes import client
        from kubernetes import config as kube_config

        access = self.config.remediation.kubernetes
        if access.kubeconfig is None:
            kube_config.load_incluster_config()
            api = client.ApiClient()
        else:
            api = kube_config.new_client_from_config(
                config_file=str(access.kubeconfig), context=access.context
            )
        # Made inside the action's span: its calls to the API server carry that trace on.
        for name, value in with_trace_headers({}).items():
            api.set_default_header(name, value)
        return api

    def input_secret(self, inputs: dict[str, Any]) -> str | None:
        """The bearer token an action's inputs refer to (by name; the value is never in inputs)."""
        ref = inputs.get("secret")
        return resolve_secret(SecretRef.model_validate(ref)) if ref else None

    def target(self, name: str) -> NotificationTarget:
        return next(t for t in self.config.notifications if t.name == name)

    def call(self, method: str, url: str, body: Any, inputs: dict[str, Any]) -> httpx.Response:
        """An HTTP call with the inputs' secret as bearer token, only to the inputs' allowed hosts."""
        return request(
            method, url, body, self.timeout, self.input_secret(inputs), inputs.get("allowed_hosts")
        )


Prepare = Callable[[Any, Mapping[str, str]], tuple[str, dict[str, Any]]]
Plan = Callable[[dict[str, Any], ActionContext], dict[str, Any]]
Execute = Callable[[dict[str, Any], dict[str, Any], ActionContext], dict[str, Any]]
Revert = Callable[[dict[str, Any], dict[str, Any], ActionContext], dict[str, Any]]
Idempotent = Callable[[dict[str, Any], ActionContext], bool]


def no_plan(_inputs: dict[str, Any], _context: ActionContext) -> dict[str, Any]:
    return {}


def never(_inputs: dict[str, Any], _context: ActionContext) -> bool:
    return False


def always(_inputs: dict[str, Any], _context: ActionContext) -> bool:
    return True


def declared(inputs: dict[str, Any], _context: ActionContext) -> bool:
    """An endpoint the operator declared idempotent (`idempotent: true`), or a Service selector."""
    return bool(inputs.get("idempotent")) or inputs.get("via") == "service"


@dataclass(frozen=True)
class ActionKind:
    prepare: Prepare
    execute: Execute
    plan: Plan = no_plan
    revert: Revert | None = None
    idempotent: Idempotent = never
