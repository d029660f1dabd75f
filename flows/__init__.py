"""Watchkeeper's Prefect flows, one module per job: thin, they wire tasks and own no logic."""
