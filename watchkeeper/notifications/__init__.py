"""Calls Watchkeeper makes to the world and the messages it sends: HTTP with the allowed-hosts
guard and one TLS context (`calls`), and incident and report notifications to Slack, PagerDuty,
webhooks and e-mail (`senders`).

Beneath `tasks/` (the model report delivers through the senders) and above `config`, `secrets` and
`store`; it imports nothing else of Watchkeeper. Remediation's actions (`watchkeeper.remediation
.actions`) make their calls through `calls`, and the `notify` action sends through `senders`.
"""
