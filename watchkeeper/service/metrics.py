"""`/metrics`: a prometheus_client Collector that reads the store on every scrape.

Nothing is kept in process memory, so the numbers are right after a restart and identical from
every replica of the service.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from watchkeeper.store import Store
from watchkeeper.store.intake import intake_totals

INTAKE_FAMILIES = {
    "predictions": ("watchkeeper_predictions", "Prediction records stored by the intake."),
    "feedback": ("watchkeeper_feedback", "Feedback (ground-truth label) records stored by the intake."),
}


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        with self.store.reading() as session:
            totals = intake_totals(session)
        families = {
            kind: CounterMetricFamily(name, doc, labels=["model_name", "model_version"])
            for kind, (name, doc) in INTAKE_FAMILIES.items()
        }
        for row in totals:
            if row.kind in families:
                families[row.kind].add_metric([row.model_name, row.model_version], row.total)
        yield from families.values()


def store_registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry
