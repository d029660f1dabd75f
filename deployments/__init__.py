"""The flows as Prefect deployments, with their schedules from the configuration."""
