"""Playbook templates filled in from an alert, safely: {placeholders} from the alert's labels, a
URL whose placeholders cannot change its host or path, Kubernetes names checked after filling, a
host the action allows, a secret named by reference only."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from watchkeeper.config import SecretRef
from watchkeeper.notifications.calls import refused_host

KUBERNETES_LABEL_VALUE = re.compile(r"^(?=.{0,63}$)(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# A Kubernetes object name (DNS-1123 subdomain), checked after placeholders are filled in.
KUBERNETES_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


class MissingPlaceholder(KeyError):
    pass


class UnsafeTarget(LookupError):
    """A rendered target the action must not reach: a bad Kubernetes name, a host not allowed."""


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise MissingPlaceholder(key)


def render(value: Any, context: Mapping[str, str]) -> Any:
    """Fill {placeholders} in strings, recursively through dicts and lists."""
    if isinstance(value, str):
        return string.Formatter().vformat(value, (), _Strict(context))
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def render_url(template: str, context: Mapping[str, str]) -> str:
    """Fill {placeholders} in a URL with each value percent-encoded as one path segment, so that a
    label value can neither add path segments nor change the host, query or fragment."""
    encoded = {k: quote(str(v), safe="") for k, v in context.items()}
    return string.Formatter().vformat(template, (), _Strict(encoded))


def kubernetes_name(template: str, context: Mapping[str, str]) -> str:
    name = render(template, context)
    if not KUBERNETES_NAME.match(name):
        raise UnsafeTarget(f"{name!r} is not a valid Kubernetes name")
    return name


def allowed_url(template: str, context: Mapping[str, str], hosts: list[str]) -> str:
    url = render_url(template, context)
    refusal = refused_host(url, hosts)
    if refusal is not None:
        raise UnsafeTarget(refusal)
    return url


def secret_reference(ref: SecretRef | None) -> dict[str, str] | None:
    """Where the action's credential lives, by name, for the action to resolve when it runs."""
    return ref.model_dump(exclude_none=True) if ref is not None else None


def prepare_deployment(spec: Any, context: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """A Kubernetes action's target: the Deployment the playbook names, placeholders filled in and
    checked as a name (scale, restart)."""
    deployment = kubernetes_name(spec.deployment, context)
    inputs = spec.model_dump(mode="json", exclude={"action"}) | {"deployment": deployment}
    return f"deployment/{spec.namespace}/{deployment}", inputs
