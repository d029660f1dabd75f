"""Guarded remediation for incidents: which playbook and what it plans (`playbooks`), the guards'
facts from the store (`guards`), the decisions recorded before anything acts (`decisions`),
executing a row once after its claim (`execution`), Alertmanager asked about silences at the last
moment (`alertmanager`), what dead runs left (`reconciler`), the automation report (`report`), and
the actions themselves, one module each (`actions/`).

Imports `tasks/` (incidents), `notifications/`, `store/`, the root modules and `runtime.control`;
`flows/` and the CLI import it.
"""
