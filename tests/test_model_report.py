"""The model report: its figures against the previous period, its pages, its delivery exactly once,
its API, and the flow on a real Prefect server (artifact)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from prefect.client.orchestration import get_client
from sqlalchemy import func, select, update

from flows.model_report import artifact_key, model_report
from tasks.incidents import correlate_pending_alerts
from tasks.metrics import Measurement, Window, save_results
from tasks.report_delivery import DeliveryFailed, deliver, produce_report
from tasks.reporting import Period, gather_report
from tasks.retention import apply_retention
from tests.conftest import LiveService, store_feedback, store_predictions
from tests.standins import HttpRecorder, SmtpStandIn
from tests.test_incidents import notify
from tests.timepaths import assert_bins_match, prediction_bodies, times_before, written
from watchkeeper.config import WatchkeeperConfig, load_config
from watchkeeper.intake.records import FeedbackRecord, PredictionRecord
from watchkeeper.settings import DEFAULT_CONFIG
from watchkeeper.store import Store
from watchkeeper.store.intake import DEFAULT_RULES, IntakeRules
from watchkeeper.store.remediation import RemediationAction
from watchkeeper.store.reports import ReportPeriod, claim_delivery, list_reports, report_html
from watchkeeper.store.schema import Alert, Incident, ModelReport, ReportDelivery
from watchkeeper.times import utcnow

HOSTILE = "</script><script>alert(1)</script>"
TOKEN = "operator-secret"


def report_config(tmp_path: Path, http: HttpRecorder | None = None, smtp: SmtpStandIn | None = None) -> Path:
    """The example config with segments, a Slack and an e-mail target for reports."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["models"][0]["segments"] = [{"column": "car", "max_values": 3}]
    reference = tmp_path / "reference.parquet"
    rng = np.random.default_rng(0)
    score = rng.uniform(0, 1, 1000)
    pd.DataFrame(
        {
            "salary": 1.0,
            "car": [1, 2, 3, 4] * 250,
            "score": score,
            "prediction": (score >= 0.5).astype(int),
            "label": (rng.random(1000) < score).astype(int),
        }
    ).to_parquet(reference)
    data["models"][0]["reference"] = {"kind": "file", "path": str(reference)}
    data["notifications"] = [
        {
            "name": "team-slack",
            "kind": "slack",
            "url": f"{http.url if http else 'http://127.0.0.1:9'}/slack/T/B/X",
        },
        {
            "name": "owners",
            "kind": "email",
            "url": f"smtp://127.0.0.1:{smtp.port if smtp else 9}",
            "to": ["owner@example.com"],
        },
    ]
    data["remediation"] = {"playbooks": []}
    data["reports"] = {"deliver_to": ["team-slack", "owners"], "period": "1h"}
    path = tmp_path / "watchkeeper.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def predictions(
    store: Store,
    period: Period,
    n: int,
    right: float,
    prefix: str,
    labelled: float,
    rules: IntakeRules = DEFAULT_RULES,
) -> None:
    """`n` predictions spread over `period`, a share `right` of the labelled ones correct."""
    rng = np.random.default_rng(len(prefix))
    step = (period.end - period.start) / n
    scores = rng.uniform(0, 1, n)
    store_predictions(
        store,
        [
            PredictionRecord(
                model_name="credit_approval",
                model_version="v1",
                request_id=f"{prefix}{i}",
                timestamp=(period.start + step * i).isoformat(),
                features={"salary": 1.0, "car": [1, 1, 2, 3][i % 4] if i % 10 else HOSTILE},
                prediction=int(scores[i] >= 0.5),
                score=float(scores[i]),
                latency_seconds=0.02 + 0.01 * (i % 7),
                error=i % 50 == 0,
            )
            for i in range(n)
        ],
        rules,
    )
    store_feedback(
        store,
        [
            FeedbackRecord(
                model_name="credit_approval",
                request_id=f"{prefix}{i}",
                label=int(scores[i] >= 0.5) if rng.random() < right else int(scores[i] < 0.5),
                business_value=100.0,
            )
            for i in range(int(n * labelled))
        ],
        rules,
    )


@pytest.fixture
def reported(store: Store, tmp_path: Path) -> tuple[Store, WatchkeeperConfig, Period]:
    """An hour of traffic that got worse than the hour before, a drift evaluation and an incident."""
    config = load_config(report_config(tmp_path))
    end = utcnow().replace(microsecond=0)
    period = Period(end - timedelta(hours=1), end)
    predictions(store, period.previous, 400, right=0.95, prefix="before-", labelled=1.0)
    predictions(store, period, 400, right=0.7, prefix="now-", labelled=0.5)
    save_results(
        store,
        "drift",
        "credit_approval",
        "",
        Window(end - timedelta(minutes=40), end - timedelta(minutes=10)),
        [Measurement("drift_share", 0.5), Measurement("drift_detected", 1.0, {"feature_name": "salary"})],
        details={"snapshot_id": "snap-1", "html": "/tmp/drift.html"},
    )
    first = end - timedelta(minutes=20)
    notify(
        store,
        {
            "status": "firing",
            "labels": {
                "alertname": "ModelAccuracyDegraded",
                "severity": "warning",
                "model_name": "credit_approval",
            },
            "annotations": {"summary": "accuracy"},
            "startsAt": first.isoformat(),
            "fingerprint": "acc-1",
        },
    )
    correlate_pending_alerts(store, config)
    with store.writing() as session:
        session.execute(update(Alert).values(received_at=first + timedelta(seconds=40)))
        session.execute(update(Incident).values(status="resolved", resolved_at=first + timedelta(minutes=12)))
        session.add(
            RemediationAction(
                idempotency_key="k1",
                incident_id=1,
                playbook="model-accuracy-degraded",
                action="fallback_model",
                target="credit_approval",
                decision="run",
                reason="matched",
                inputs={},
                status="succeeded",
                decided_at=first + timedelta(seconds=65),
            )
        )
    return store, config, period


def test_a_report_sets_the_period_against_the_previous_one(reported: tuple, tmp_path: Path) -> None:
    store, config, period = reported
    built = produce_report(store, config, config.models[0], period, tmp_path, "http://wk.example", None)
    summary = built.summary
    accuracy = summary["quality"]["scores"]["accuracy"]
    assert accuracy["low"] < accuracy["value"] < accuracy["high"]
    assert 0.6 < accuracy["value"] < 0.8 < summary["previous_quality"]["scores"]["accuracy"]["value"]
    assert summary["estimated"]["rows"] == 196 and 0 < summary["estimated"]["accuracy"] < 1
    assert summary["traffic"]["requests"] == 400 and summary["traffic"]["errors"] == 8
    assert summary["quality"]["label_coverage"] == 0.5
    [incident] = summary["incidents"]
    assert incident["time_to_detect_seconds"] == 40 and incident["time_to_resolve_seconds"] == 720
    assert incident["time_to_act_seconds"] == 65
    assert [a["action"] for a in summary["remediation"]] == ["fallback_model"]
    assert summary["drift"]["windows"][0]["drifted"] == ["salary"]
    # The reference's top three values keep their labels; the hostile value is among the rest.
    assert {s["segment"] for s in summary["segments"]} == {"1", "2", "3", "_other_"}
    assert "## Incidents" in built.markdown and "[#1](http://wk.example/v1/incidents/1)" in built.markdown
    assert (
        "Expected bands not available: no Prometheus to ask (set WATCHKEEPER_PROMETHEUS_URL)"
        in built.markdown
    )
    assert built.link == f"http://wk.example/v1/reports/{built.report_id}"
    page = report_html(store, built.report_id)
    assert page is not None and page.startswith("<!DOCTYPE html>")
    assert "<script src=" not in page and "plotly.js v" in page  # plotly.js itself, inlined
    assert HOSTILE not in page and "&lt;/script&gt;" not in page  # beyond the 3 kept values: _other_


def test_a_rerun_of_the_period_replaces_the_report_under_the_same_id(reported: tuple, tmp_path: Path) -> None:
    store, config, period = reported
    first = produce_report(store, config, config.models[0], period, tmp_path, None, "run-1")
    again = produce_report(store, config, config.models[0], period, tmp_path, None, "run-2")
    assert first.report_id == again.report_id
    with store.reading() as session:
        assert session.scalar(select(func.count()).select_from(ModelReport)) == 1
    [listed] = list_reports(store, "credit_approval").items
    assert listed["flow_run_id"] == "run-2" and "html" not in listed
    later = Period(period.end, period.end + timedelta(hours=1))
    produce_report(store, config, config.models[0], later, tmp_path, None, None)
    page = list_reports(store, limit=1)
    assert page.items[0]["period_end"] == later.end.isoformat() and page.next_cursor is not None
    removed = apply_retention(
        store, config, tmp_path, later.end + config.retention.reports + timedelta(hours=2)
    )
    assert removed["model_reports"] == 2


def test_each_target_gets_the_report_once_and_a_failed_send_is_retried(
    reported: tuple, tmp_path: Path
) -> None:
    store, _config, period = reported
    with HttpRecorder() as http, SmtpStandIn() as smtp:
        config = load_config(report_config(tmp_path, http, smtp))
        built = produce_report(store, config, config.models[0], period, tmp_path, "http://wk.example", None)
        http.fail_next("/slack/T/B/X", 500)
        with pytest.raises(DeliveryFailed):
            deliver(store, config, built, "run-1")
        assert deliver(store, config, built, "run-1") == {
            "team-slack": "sent",
            "owners": "already claimed",
        }
        assert deliver(store, config, built, "run-2") == {
            "team-slack": "already claimed",
            "owners": "already claimed",
        }
        posts = http.to("/slack/T/B/X")
        [mail] = smtp.messages
    assert len(posts) == 2  # the one answered 500, then the one that landed
    text = posts[-1].body["text"]
    assert "accuracy" in text and "requests: 400" in text and built.link in text
    [attachment] = [part for part in mail.walk() if part.get_filename()]
    assert (
        attachment.get_filename().endswith(".html")
        and "plotly.js v" in attachment.get_payload(decode=True).decode()
    )
    with store.reading() as session:
        assert {r.target: r.status for r in session.scalars(select(ReportDelivery))} == {
            "team-slack": "sent",
            "owners": "sent",
        }


def test_one_claim_wins_among_concurrent_senders(store: Store) -> None:
    period = ReportPeriod("credit_approval", utcnow() - timedelta(days=1), utcnow())
    barrier = threading.Barrier(8)
    won: list[bool] = []

    def claim(i: int) -> None:
        barrier.wait()
        won.append(claim_delivery(store, period, "team-slack", f"run-{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]


def test_reports_are_listed_and_served_to_operators_only(reported: tuple, tmp_path: Path) -> None:
    store, config, period = reported
    built = produce_report(store, config, config.models[0], period, tmp_path, None, None)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with LiveService(config, store, api_token=TOKEN) as service:
        assert httpx.get(f"{service.url}/v1/reports").status_code == 401
        listed = httpx.get(f"{service.url}/v1/reports", params={"model": "credit_approval"}, headers=headers)
        page = httpx.get(f"{service.url}/v1/reports/{built.report_id}", headers=headers)
        missing = httpx.get(f"{service.url}/v1/reports/999", headers=headers)
        bad = httpx.get(f"{service.url}/v1/reports", params={"model": "no such/model"}, headers=headers)
    assert [r["id"] for r in listed.json()["reports"]] == [built.report_id]
    assert listed.json()["reports"][0]["summary"]["traffic"]["requests"] == 400
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert missing.status_code == 404 and bad.status_code == 422 and "model" in bad.text


def test_the_flow_keeps_an_artifact_on_prefect(
    reported: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    store, _config, period = reported
    monkeypatch.setenv("WATCHKEEPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WATCHKEEPER_DATABASE_URL", store.url.render_as_string(hide_password=False))
    monkeypatch.setenv("WATCHKEEPER_CONFIG", str(report_config(tmp_path)))
    ids = model_report(model="credit_approval", start=period.start, end=period.end, deliver=False)
    with get_client(sync_client=True) as client:
        artifact = max(
            (a for a in client.read_artifacts() if a.key == artifact_key("credit_approval")),
            key=lambda a: a.created,
        )
    assert artifact.type == "markdown" and "## Quality" in artifact.data
    assert report_html(store, ids["credit_approval"]) is not None
    with pytest.raises(ValueError, match="not a configured model"):
        model_report.fn(model="nope")


def test_the_capacity_line_needs_half_an_hour_and_names_when_the_limit_is_reached() -> None:
    from tasks.reporting import trend_to_limit

    now = utcnow()
    rising = [(now - timedelta(minutes=60 - m), 0.2 + 0.01 * m) for m in range(0, 61, 5)]
    trend = trend_to_limit(rising, 1.0, now)
    assert trend is not None and trend["slope_per_hour"] == pytest.approx(0.6)
    reached = datetime.fromisoformat(trend["reaches_limit_at"])
    assert reached - now == pytest.approx(timedelta(hours=0.2 / 0.6), abs=timedelta(minutes=1))
    assert trend_to_limit(rising[-5:], 1.0, now) is None  # 20 minutes of history
    falling = [(t, 1.0 - v) for t, v in rising]
    assert trend_to_limit(falling, 1.0, now)["reaches_limit_at"] is None


def test_a_report_over_predictions_posted_with_offsets_bins_each_at_its_utc_time(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    """The real paths: predictions POSTed over HTTP with `Z`, `+00:00`, `+02:00` and `-05:30`, and the
    flow's period given as Prefect passes parameters (text it validates itself), in two offsets."""
    config_path = report_config(tmp_path)
    end = utcnow().replace(second=0, microsecond=0) - timedelta(hours=3)
    times = times_before(end)
    outside = [end, end + timedelta(hours=2)]  # after the period: not counted
    with LiveService(load_config(config_path), store) as service:
        posted = httpx.post(f"{service.url}/v1/predictions", json=prediction_bodies(times + outside, "tz"))
    assert posted.status_code == 200, posted.text
    monkeypatch.setenv("WATCHKEEPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WATCHKEEPER_DATABASE_URL", store.url.render_as_string(hide_password=False))
    monkeypatch.setenv("WATCHKEEPER_CONFIG", str(config_path))
    start = written(end - timedelta(hours=1), timedelta(hours=2))
    ids = model_report(model="credit_approval", start=start, end=written(end, "Z"), deliver=False)
    [listed] = list_reports(store, "credit_approval").items
    assert listed["id"] == ids["credit_approval"]
    assert listed["period_start"] == (end - timedelta(hours=1)).isoformat()
    assert_bins_match(listed["summary"], times + outside, end)


def test_a_report_from_the_aggregates_gives_the_raw_rows_figures(store: Store, tmp_path: Path) -> None:
    """With raw rows kept at 1 % (or none) the report reads the per-bucket aggregates: on a period of
    whole buckets its figures are the raw rows' (latency within the sketch's 1 %)."""
    config = load_config(report_config(tmp_path))
    end = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    period = Period(end - timedelta(hours=1), end)
    model = config.models[0]
    rules = IntakeRules(model_for={model.name: model}.get)
    predictions(store, period.previous, 400, right=0.95, prefix="before-", labelled=1.0, rules=rules)
    predictions(store, period, 400, right=0.7, prefix="now-", labelled=0.5, rules=rules)
    kept = {"car": ["1", "2"]}
    raw = gather_report(store, config, model, period, None, kept)
    sampled = config.model_copy(update={"intake": config.intake.model_copy(update={"raw_predictions": 0.01})})
    aggregated = gather_report(store, sampled, model, period, None, kept)
    assert raw["source"] == "raw rows" and aggregated["source"].startswith("aggregates")
    for key in ("quality", "previous_quality", "business", "previous_business", "segments"):
        assert aggregated[key] == raw[key], key
    for key in ("requests", "errors", "error_rate", "throughput_rps"):
        assert aggregated["traffic"][key] == raw["traffic"][key]
    for q in ("p50", "p95", "p99"):
        assert aggregated["traffic"][f"latency_{q}_seconds"] == pytest.approx(
            raw["traffic"][f"latency_{q}_seconds"], rel=0.02
        )
    assert sum(aggregated["series"]["requests"]) == sum(raw["series"]["requests"]) == 400
    assert len(aggregated["series"]["at"]) == 30  # 60 one-minute buckets, two to a bin
