"""The correlation engine on its own: which alerts are one problem."""

from datetime import UTC, datetime, timedelta

from tasks.correlation import AlertEvent, CorrelationRules, Correlator, accounts_for, rank_root_causes
from watchkeeper.config import Correlation, Topology, WatchkeeperConfig

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


def _measured(alert_id: int, service: str, change: float, traffic: float, strength: float) -> AlertEvent:
    return AlertEvent(
        alert_id, "latency_anomalous", service, T0, strength=strength, change=change, traffic=traffic
    )


def test_a_dependency_is_blamed_only_when_its_change_accounts_for_its_caller_s() -> None:
    """A database 2 ms slower under a service 450 ms slower did not slow it down (the service did);
    a table 160 ms slower under a search 170 ms slower did, however much larger the search's z."""
    rules = CorrelationRules(
        Topology(
            services={"site": ["pay", "search"], "pay": ["db"], "search": ["table"], "db": [], "table": []}
        ),
        Correlation(),
    )
    slow_service = [
        _measured(1, "pay", 0.449, 108, 22.0),
        _measured(2, "site", 0.093, 494, 19.2),
        _measured(3, "db", 0.0017, 138, 5.7),
    ]
    slow_table = [
        _measured(1, "search", 0.174, 784, 348.0),
        _measured(2, "site", 0.197, 480, 40.6),
        _measured(3, "table", 0.163, 838, 98.6),
    ]
    assert [c.subject for c in rank_root_causes(slow_service, rules)][:1] == ["pay"]
    assert [c.subject for c in rank_root_causes(slow_table, rules)][:1] == ["table"]
    assert accounts_for([slow_service[2]], [slow_service[0]]) is False
    assert accounts_for([slow_table[2]], [slow_table[0]]) is True
    assert accounts_for([AlertEvent(9, "latency_anomalous", "db", T0)], [slow_service[0]]) is None


def _alert(alert_id: int, name: str, service: str, seconds: int) -> AlertEvent:
    return AlertEvent(alert_id, name, service, T0 + timedelta(seconds=seconds))


def test_a_second_fault_under_callers_already_explained_opens_its_own_incident() -> None:
    """The API slows down because its database saturated. Five minutes later its cache saturates:
    the API's alerts already have their cause, so the cache is a new problem, not a second root of
    the first. Had the API had no alerting dependency, the cache would have been its late-noticed
    cause and joined; had the cache alerted with the API, it could be their cause and joins."""
    rules = CorrelationRules(
        Topology(services={"api": ["db", "cache"], "db": [], "cache": []}),
        Correlation(causal_rules={"SaturationHigh": ["LatencyHigh"]}),
    )
    db, api, cache = Correlator(rules).add_all(
        [
            _alert(1, "SaturationHigh", "db", 0),
            _alert(2, "LatencyHigh", "api", 40),
            _alert(3, "SaturationHigh", "cache", 300),
        ]
    )
    assert api.incident_id == db.incident_id and api.reason in {"causal", "dependency"}
    assert cache.opened and cache.incident_id != db.incident_id

    api_alone, late_cache = Correlator(rules).add_all(
        [_alert(1, "LatencyHigh", "api", 0), _alert(2, "SaturationHigh", "cache", 300)]
    )
    assert late_cache.incident_id == api_alone.incident_id and late_cache.reason == "causal"

    *_, api_again, cache_with_api = Correlator(rules).add_all(
        [
            _alert(1, "SaturationHigh", "db", 0),
            _alert(2, "LatencyHigh", "api", 40),
            _alert(3, "SaturationHigh", "cache", 40),
        ]
    )
    assert cache_with_api.incident_id == api_again.incident_id and not cache_with_api.opened


def test_on_one_service_the_cause_stands_for_it_even_when_its_effect_fired_first(
    example_config: WatchkeeperConfig,
) -> None:
    """The drill's traffic drop: business value falls as soon as the labels thin out, five seconds
    before the throughput anomaly's `for` ends; both warnings on the model's service. The throughput
    is the root cause (a causal rule), and selects the playbook."""
    rules = CorrelationRules(Topology(services={"credit-api": []}), example_config.correlation)
    business = _alert(1, "BusinessImpactAnomalous", "credit-api", 0)
    throughput = _alert(2, "ModelThroughputAnomalous", "credit-api", 5)
    [top] = rank_root_causes([business, throughput], rules)
    assert (top.alertname, top.alert_id) == ("ModelThroughputAnomalous", 2)
    [alone] = rank_root_causes([business], rules)  # before the throughput alert joins
    assert alone.alertname == "BusinessImpactAnomalous"
