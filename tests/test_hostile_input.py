"""Hostile and malformed bodies on every write endpoint: a 4xx naming the problem, never a 5xx,
nothing half written, and nothing stored that breaks a later read or `/metrics`.

The corpus is the one issue 13 measured (89 answers were a 5xx or a dropped connection), kept as a
regression corpus: bodies that are not UTF-8, deep nesting, integers beyond 64 bits, lone
surrogates, NUL, non-finite numbers and timestamps that cannot be converted to UTC.
"""

from __future__ import annotations

import copy
import gzip
import json
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import LiveService
from tests.test_alert_intake import NOTIFICATION
from tests.test_service import predictions
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.store import Store
from watchkeeper.store.schema import Alert, AlertNotification, Prediction

FEEDBACK = {"model_name": "credit_approval", "request_id": "req-0", "label": 1, "business_value": 2.0}
PIPELINE_RUN = {
    "pipeline_name": "credit_feature_pipeline",
    "run_id": "run-1",
    "started_at": "2026-11-26T09:00:00Z",
    "duration_seconds": 12.5,
    "records": 100,
}
FEATURE_LOOKUP = {
    "feature_store": "credit_online_features",
    "feature_view": "applicant_profile",
    "request_id": "r-1",
    "timestamp": "2026-11-26T09:00:00Z",
    "latency_seconds": 0.004,
}
SURROGATE = '"\\ud800"'  # a lone surrogate, as JSON text writes it
UNCONVERTIBLE = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00", "1900-01-01T00:00:00Z")
HOSTILE_NUMBERS = ("NaN", "Infinity", "-Infinity", "1e999", str(2**64), "9" * 5000)


def _text(value: Any) -> str:
    return json.dumps(value)


def _with(record: dict[str, Any], field: str, raw: str) -> str:
    """The record as JSON text with one field's value replaced by raw JSON text (a NaN, say)."""
    marker = "__RAW__"
    return json.dumps({**record, field: marker}).replace(f'"{marker}"', raw)


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def record_bodies(record: dict[str, Any], fields: dict[str, list[str]]) -> Iterator[tuple[str, bytes, dict]]:
    """Malformed batches built around one valid record: (case, body, headers)."""
    valid = _text([record])
    yield "not utf-8", b"\xff\xfe\x00[" + valid.encode(), {}
    yield "utf-16", valid.encode("utf-16"), {}
    yield "gzip without its header", gzip.compress(valid.encode()), {}
    yield "unknown encoding", valid.encode(), {"content-encoding": "br"}
    yield "broken gzip", b"\x1f\x8b\x08rubbish", {"content-encoding": "gzip"}
    yield "deep array", ("[" * 100_000 + "]" * 100_000).encode(), {}
    yield "deep object", f"[{_nested(50_000)}]".encode(), {}
    yield "empty", b"", {}
    yield "null", b"null", {}
    yield "object", b"{}", {}
    yield "scalars", b"[1, 2]", {}
    for field, raws in fields.items():
        for raw in raws:
            yield f"{field}={raw[:20]}", f"[{_with(record, field, raw)}]".encode(), {}
            yield (
                f"ndjson {field}={raw[:20]}",
                _with(record, field, raw).encode(),
                {"content-type": "application/x-ndjson"},
            )


def prediction_bodies() -> Iterator[tuple[str, bytes, dict]]:
    record = predictions(1)[0]
    numbers = [*HOSTILE_NUMBERS, '"nan"', '"inf"']
    yield from record_bodies(
        record,
        {
            "score": numbers,
            "latency_seconds": [*numbers, "1e300"],
            "prediction": [*HOSTILE_NUMBERS, SURROGATE, '"\\u0000"'],
            "request_id": [SURROGATE, '"a\\u0000b"'],
            "timestamp": [f'"{t}"' for t in UNCONVERTIBLE] + ['"0"', "1700000000", '"1700000000.5"'],
            "features": [
                '{"salary": NaN}',
                '{"salary": 1e999}',
                f'{{"salary": {2**70}}}',
                f"{{{SURROGATE}: 1}}",
                '{"a": "\\u0000"}',
                _nested(40),
            ],
        },
    )


def feedback_bodies() -> Iterator[tuple[str, bytes, dict]]:
    yield from record_bodies(
        FEEDBACK,
        {
            "label": [*HOSTILE_NUMBERS, SURROGATE],
            "business_value": [*HOSTILE_NUMBERS, '"nan"', "1e300"],
            "timestamp": [f'"{t}"' for t in UNCONVERTIBLE] + ['"0"', "1700000000", '"1700000000.5"'],
        },
    )


def pipeline_bodies() -> Iterator[tuple[str, bytes, dict]]:
    yield from record_bodies(
        PIPELINE_RUN,
        {
            "duration_seconds": [*HOSTILE_NUMBERS, "1e300"],
            "records": [str(2**63), "1e999", "NaN"],
            "started_at": [f'"{t}"' for t in UNCONVERTIBLE],
            "run_id": [SURROGATE],
        },
    )


def lookup_bodies() -> Iterator[tuple[str, bytes, dict]]:
    yield from record_bodies(
        FEATURE_LOOKUP,
        {
            "latency_seconds": [*HOSTILE_NUMBERS, "-1"],
            "keys": [str(2**63), "0", "NaN"],
            "materialized_at": [f'"{t}"' for t in UNCONVERTIBLE],
            "feature_view": [SURROGATE, '"no_such_view"'],
        },
    )


def _notification_with(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    body = copy.deepcopy(NOTIFICATION)
    change(body)
    return body


def alertmanager_bodies() -> Iterator[tuple[str, bytes, dict]]:
    valid = _text(NOTIFICATION)
    yield "not utf-8", b"\xff" + valid.encode(), {}
    yield "utf-16", valid.encode("utf-16"), {}
    yield "gzip without its header", gzip.compress(valid.encode()), {}
    yield "deep", ("[" * 100_000 + "]" * 100_000).encode(), {}
    yield "list", b"[]", {}
    yield "envelope NaN", valid.replace('"truncatedAlerts": 0', '"truncatedAlerts": NaN').encode(), {}
    yield (
        "envelope huge int",
        valid.replace('"truncatedAlerts": 0', f'"truncatedAlerts": {2**70}').encode(),
        {},
    )
    yield "receiver NUL", valid.replace('"receiver": "watchkeeper"', '"receiver": "a\\u0000"').encode(), {}
    alert = NOTIFICATION["alerts"][0]
    for moment in UNCONVERTIBLE:
        body = _text(_notification_with(lambda n, m=moment: n["alerts"][0].update(startsAt=m)))
        yield f"startsAt {moment}", body.encode(), {}
    for label in ("service", "alertname", "model_name"):
        text = _text(NOTIFICATION).replace(
            f'"{label}": "{alert["labels"][label]}"', f'"{label}": {SURROGATE}'
        )
        yield f"surrogate in {label}", text.encode(), {}
    yield "NUL in annotation", valid.replace("CRITICAL:", "\\u0000").encode(), {}
    yield (
        "severity too long",
        _text(_notification_with(lambda n: n["alerts"][0]["labels"].update(severity="x" * 100))).encode(),
        {},
    )
    yield (
        "label not a string",
        _text(_notification_with(lambda n: n["alerts"][0]["labels"].update(team=3))).encode(),
        {},
    )


def operator_bodies() -> Iterator[tuple[str, str, bytes]]:
    """(path, method, body) for the kill switch and an approval."""
    for raw in (*HOSTILE_NUMBERS, SURROGATE, '"yes"', "null"):
        yield "/v1/remediation", "PUT", f'{{"enabled": {raw}}}'.encode()
        yield "/v1/incidents/1/approval", "POST", f'{{"approved": {raw}}}'.encode()
    yield "/v1/incidents/1/approval", "POST", b'{"approved": true, "comment": "a\\u0000"}'
    yield "/v1/incidents/1/approval", "POST", f'{{"approved": true, "comment": {SURROGATE}}}'.encode()
    yield "/v1/remediation", "PUT", b"\xff\xfe"
    yield "/v1/remediation", "PUT", ("[" * 100_000 + "]" * 100_000).encode()
    yield "/v1/remediation", "PUT", b'{"enabled": 1e999}'


def assert_refused(response: httpx.Response, case: str) -> None:
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:300])
    detail = response.json()
    assert detail.get("error"), (case, detail)


def table_counts(store: Store) -> tuple[int, ...]:
    with store.reading() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(t))
            for t in (Prediction, Alert, AlertNotification)
        )


def assert_reads_still_work(url: str) -> None:
    for path in ("/v1/alerts", "/v1/incidents", "/v1/actions", "/v1/actions/report", "/v1/remediation"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
    assert httpx.get(f"{url}/healthz").status_code == 200
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            assert math.isfinite(sample.value), (sample.name, sample.labels, sample.value)


def test_every_write_endpoint_refuses_the_hostile_corpus_with_a_4xx(
    service: LiveService, store: Store
) -> None:
    endpoints = {
        "/v1/predictions": prediction_bodies,
        "/v1/feedback": feedback_bodies,
        "/v1/pipeline-runs": pipeline_bodies,
        "/v1/feature-lookups": lookup_bodies,
        "/v1/alertmanager": alertmanager_bodies,
    }
    seen = 0
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for path, bodies in endpoints.items():
            for case, body, headers in bodies():
                assert_refused(client.post(path, content=body, headers=headers), f"{path} {case}")
                seen += 1
        for path, method, body in operator_bodies():
            assert_refused(client.request(method, path, content=body), f"{method} {path} {body[:40]!r}")
            seen += 1
    assert seen > 200
    assert table_counts(store) == (0, 0, 0)
    assert_reads_still_work(service.url)


def test_a_gzip_body_that_says_so_is_taken(service: LiveService, store: Store) -> None:
    body = gzip.compress(json.dumps(predictions(3)).encode())
    response = httpx.post(f"{service.url}/v1/predictions", content=body, headers={"content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 3


def test_a_record_field_is_named_with_its_index(service: LiveService) -> None:
    body = json.dumps(predictions(3)).replace('"score": 0.5', '"score": NaN', 1)
    response = httpx.post(f"{service.url}/v1/predictions", content=body)
    assert response.status_code == 422
    assert response.json() == {
        "error": "expected a finite number (not NaN, Infinity or 1e999)",
        "index": 0,
        "field": "score",
    }


def test_one_malformed_alert_does_not_cost_its_group(service: LiveService, store: Store) -> None:
    """Alertmanager drops a notification answered 4xx; the valid alert beside a broken one is stored,
    the broken one kept aside with its reason, and the answer lists it."""
    body = copy.deepcopy(NOTIFICATION)
    broken = copy.deepcopy(body["alerts"][0])
    broken["labels"].pop("alertname")
    broken["fingerprint"] = "0000000000000001"
    body["alerts"].insert(0, broken)
    response = httpx.post(f"{service.url}/v1/alertmanager", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["new_alerts"] == 1 and answer["run_pending"]
    assert answer["rejected"] == [
        {"index": 0, "field": "alerts[0].labels", "reason": "Value error, an alert needs an alertname label"}
    ]
    with store.reading() as session:
        notification = session.scalars(select(AlertNotification)).one()
        assert [r["field"] for r in notification.rejected] == ["alerts[0].labels"]
        assert '"fingerprint": "0000000000000001"' in notification.rejected[0]["alert"]
        assert len(notification.payload["alerts"]) == 1
    assert table_counts(store) == (0, 1, 1)


def test_a_notification_with_no_valid_alert_is_refused_whole(service: LiveService, store: Store) -> None:
    body = copy.deepcopy(NOTIFICATION)
    body["alerts"][0]["startsAt"] = UNCONVERTIBLE[0]
    response = httpx.post(f"{service.url}/v1/alertmanager", json=body)
    assert response.status_code == 422
    assert response.json()["field"] == "alerts[0].startsAt"
    assert table_counts(store) == (0, 0, 0)


# As Grafana-managed alerting (Grafana 10/11) posts to a webhook contact point.
GRAFANA_NOTIFICATION = {
    "receiver": "watchkeeper",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "ModelLatencyHigh",
                "grafana_folder": "Models",
                "model_name": "credit_approval",
                "service": "model-inference",
                "severity": "warning",
            },
            "annotations": {"summary": "p95 latency above 500 ms"},
            "startsAt": "2026-11-26T10:51:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:3000/alerting/grafana/ddxyz/view?orgId=1",
            "fingerprint": "c6eadffa33fcdf37",
            "silenceURL": "http://127.0.0.1:3000/alerting/silence/new?alertmanager=grafana",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 0.7342, "C": 1},
            "valueString": "[ var='B' labels={model_name=credit_approval} value=0.7342 ]",
        }
    ],
    "groupLabels": {"alertname": "ModelLatencyHigh", "grafana_folder": "Models"},
    "commonLabels": {"alertname": "ModelLatencyHigh", "severity": "warning"},
    "commonAnnotations": {"summary": "p95 latency above 500 ms"},
    "externalURL": "http://127.0.0.1:3000/",
    "version": "1",
    "groupKey": '{}/{__grafana_autogenerated__="true"}:{alertname="ModelLatencyHigh"}',
    "truncatedAlerts": 0,
    "title": "[FIRING:1] ModelLatencyHigh Models (credit_approval model-inference warning)",
    "state": "alerting",
    "message": "**Firing**\n\nValue: B=0.7342, C=1\nLabels:\n - alertname = ModelLatencyHigh\n",
}


def test_a_grafana_alerting_webhook_is_taken_as_grafana_sends_it(service: LiveService, store: Store) -> None:
    response = httpx.post(f"{service.url}/v1/alertmanager", json=GRAFANA_NOTIFICATION)
    assert response.status_code == 200, response.text
    assert response.json()["new_alerts"] == 1 and response.json()["rejected"] == []
    with store.reading() as session:
        alert = session.scalars(select(Alert)).one()
        assert (alert.alertname, alert.model_name, alert.ends_at) == (
            "ModelLatencyHigh",
            "credit_approval",
            None,
        )
        assert alert.starts_at.isoformat().startswith("2026-11-26T08:51:03.157")


@pytest.fixture
def small_body_service(example_config: WatchkeeperConfig, store: Store) -> Iterator[LiveService]:
    config = example_config.model_copy(
        update={"intake": example_config.intake.model_copy(update={"max_body_bytes": 50_000})}
    )
    with LiveService(config, store) as live:
        yield live


def test_a_gzip_bomb_is_refused_at_the_size_limit(small_body_service: LiveService, store: Store) -> None:
    bomb = gzip.compress(b"[" + b" " * 20_000_000 + b"]")
    assert len(bomb) < 50_000
    response = httpx.post(
        f"{small_body_service.url}/v1/predictions", content=bomb, headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 413 and "decompressed" in response.json()["error"]
    assert table_counts(store) == (0, 0, 0)


def test_refusals_are_counted_by_endpoint_and_reason_and_logged(
    service: LiveService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="watchkeeper.service")
    httpx.post(f"{service.url}/v1/predictions", content=b"\xff")
    httpx.post(f"{service.url}/v1/predictions", content=b"[]")
    httpx.post(f"{service.url}/v1/feedback", content=b"[1]", headers={"content-encoding": "br"})
    body = copy.deepcopy(NOTIFICATION)
    body["alerts"].append({"status": "firing", "labels": {}})
    assert httpx.post(f"{service.url}/v1/alertmanager", json=body).status_code == 200
    rejected = "watchkeeper_http_requests_rejected_total"
    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{service.url}/metrics").text):
        for sample in family.samples:
            if sample.name in {rejected, "watchkeeper_alerts_rejected_total"}:
                labels = sample.labels
                found[(sample.name, labels.get("endpoint"), labels.get("reason"))] = sample.value
    assert found[(rejected, "/v1/predictions", "undecodable_body")] == 1
    assert found[(rejected, "/v1/predictions", "invalid_value")] == 1
    assert found[(rejected, "/v1/feedback", "unsupported_encoding")] == 1
    assert found[(rejected, "/v1/alertmanager", "invalid_value")] == 0
    assert found[("watchkeeper_alerts_rejected_total", None, None)] == 1
    logged = [record.getMessage() for record in caplog.records if record.name == "watchkeeper.service"]
    assert logged == [
        "POST /v1/predictions answered 400",
        "POST /v1/predictions answered 422",
        "POST /v1/feedback answered 415",
    ]


def test_lists_page_with_a_cursor(service: LiveService) -> None:
    body = copy.deepcopy(NOTIFICATION)
    template = body["alerts"][0]
    body["alerts"] = [
        {**template, "fingerprint": f"{n:016x}", "startsAt": f"2026-11-26T09:0{n}:00Z"} for n in range(5)
    ]
    assert httpx.post(f"{service.url}/v1/alertmanager", json=body).json()["new_alerts"] == 5
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        answer = httpx.get(f"{service.url}/v1/alerts", params=params).json()
        seen += [a["fingerprint"] for a in answer["alerts"]]
        pages += 1
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == [f"{n:016x}" for n in reversed(range(5))]
    for foreign in ("nope", "W10", "WzEsMl0", "Wzk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5XQ"):
        refused = httpx.get(f"{service.url}/v1/actions", params={"cursor": foreign})
        assert refused.status_code == 422 and refused.json()["field"] == "cursor", (foreign, refused.text)
