"""The correlation engine on its own: which alerts are one problem."""

from datetime import UTC, datetime, timedelta

from tasks.correlation import AlertEvent, CorrelationRules, Correlator
from watchkeeper.config import Topology, WatchkeeperConfig

T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def records_alert(id_: int, model: str, seconds: int) -> AlertEvent:
    """The same fast data-quality rule, as Prometheus labels it, for one model's dataset."""
    return AlertEvent(
        id=id_,
        name="DataRecordsFailingChecksCritical",
        service=f"{model}-api",
        starts_at=T0 + timedelta(seconds=seconds),
        labels={
            "alertname": "DataRecordsFailingChecksCritical",
            "severity": "critical",
            "team": "data_engineering",
            "service": "data-pipeline",
            "check": "null",
            "column": "salary",
            "model_name": model,
            "dataset_name": f"{model}_data",
        },
        annotations={"summary": f"CRITICAL: A broken feature pipeline for {model}_data"},
    )


def test_the_same_rule_on_two_unrelated_models_is_two_incidents(example_config: WatchkeeperConfig) -> None:
    topology = Topology(services={"fraud-api": [], "credit-api": []})
    rules = CorrelationRules(topology, example_config.correlation)
    correlator = Correlator(rules)
    fraud, credit, fraud_again = correlator.add_all(
        [records_alert(1, "fraud", 0), records_alert(2, "credit", 20), records_alert(3, "fraud", 40)]
    )
    assert fraud.opened and credit.opened and fraud.incident_id != credit.incident_id
    assert fraud_again.incident_id == fraud.incident_id and not fraud_again.opened
