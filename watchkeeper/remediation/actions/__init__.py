"""What remediation actions do to the world: Kubernetes, HTTP endpoints, notifications, tickets.

One module per action (or per family of actions sharing one call), each declaring
`ACTIONS = {config name: ActionKind(...)}`; this package gathers them, so adding an action is one
module here and its playbook entry in the config schema (`watchkeeper.config`). An `ActionKind`
(`kind.py`) has:
- `prepare(spec, context) -> (target, inputs)`: the playbook's entry filled in from the alert's
  labels (`templates.py`: placeholders that cannot change a URL's host or path, Kubernetes names
  checked, hosts allowed, secrets by reference), what the decision records;
- `plan(inputs, context) -> plan`: what to do, computed once before the first call and recorded
  (scale reads the replicas and decides "set 4"), so that a retry or a re-send after a crash sets
  the same 4 instead of adding again to a world it already changed;
- `execute(inputs, plan, context) -> result`: the call itself;
- `revert(inputs, result, context)`, for actions undone when the incident resolves;
- `idempotent(inputs, context)`: whether sending the planned call twice leaves the world as once
  does, the only case in which the reconciler re-sends an action whose claimant died mid-call.

A failure raises `CallFailed` (or the client's own error) so the Prefect task retries it;
`CallRefused` is never retried. Inputs carry at most a secret's reference, resolved when the
action runs and never put in a result, and a secret is sent only to a host the action allows.
"""

from __future__ import annotations

import importlib
import pkgutil

from watchkeeper.remediation.actions.kind import ActionKind

ACTIONS: dict[str, ActionKind] = {}
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "kind":
        ACTIONS.update(importlib.import_module(f"{__name__}.{_module.name}").ACTIONS)
REVERTIBLE = frozenset(name for name, kind in ACTIONS.items() if kind.revert is not None)
