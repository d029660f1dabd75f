"""The HTTP service: the intake, the Alertmanager webhook, the read API, `/metrics` (a Prometheus
collector over the latest results) and the OpenAPI document. Later, the pages for people on call
land here.

Imports the store, the intake, `tasks/` readers and the root modules; never Prefect's runtime.
"""
