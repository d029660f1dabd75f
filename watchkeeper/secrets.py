"""Resolving a secret reference from the configuration: an environment variable or a Prefect Secret block."""

from __future__ import annotations

import os

from watchkeeper.config import SecretRef


class SecretUnavailable(LookupError):
    pass


def resolve_secret(ref: SecretRef) -> str:
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise SecretUnavailable(f"environment variable {ref.env} is not set")
        return value
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(ref.prefect_secret).get())
    except ValueError as exc:
        raise SecretUnavailable(
            f"Prefect Secret block {ref.prefect_secret!r} could not be loaded: {exc}"
        ) from exc
