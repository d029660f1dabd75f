"""Measuring, as Prefect tasks over plain functions that tests call without Prefect: metrics,
estimation, segments, drift (Evidently), data quality, pipelines, incidents and correlation,
reports, retention.

Imports the store, the intake, `notifications/` and the root modules; never `remediation/`,
`flows/` or the runtime.
"""
