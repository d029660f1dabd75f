"""Watchkeeper: watches AI models in production and acts on what it sees.

The package by capability (docs/architecture.md): `config`, `settings`, `secrets`, `times`,
`severity` and `markdown` at the root; `intake/`, `store/`, `notifications/`, `remediation/`,
`runtime/`, `service/`, `local/`, `evaluation/`, `cli/`. Beside it, `tasks/` (the measuring),
`flows/` and `deployments/`. Each package says what it owns and what it may import; `.importlinter`
holds the layers and `make lint` checks them.
"""
