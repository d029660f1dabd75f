"""The local stack's Slack and PagerDuty stand-in answers as they do and keeps what it got."""

import json
import threading
from pathlib import Path

import httpx

from tests.conftest import free_port
from watchkeeper.local.notification_sink import NotificationSink


def test_the_sink_answers_like_slack_and_pagerduty_and_masks_the_routing_key(tmp_path: Path) -> None:
    port = free_port()
    sink = NotificationSink(port, tmp_path / "notifications.jsonl")
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        slack = httpx.post(f"{base}/slack/watchkeeper-demo", json={"text": "report"})
        page = httpx.post(f"{base}/v2/enqueue", json={"routing_key": "secret-key", "dedup_key": "i-1"})
        bad = httpx.post(f"{base}/slack/x", content=b"not json")
        kept = httpx.get(f"{base}/messages").json()
    finally:
        sink.server.shutdown()
        sink.server.server_close()
    assert (slack.status_code, slack.text) == (200, "ok")
    assert page.status_code == 202 and page.json()["dedup_key"] == "i-1"
    assert bad.status_code == 400
    assert [m["body"] for m in kept] == [{"text": "report"}, {"routing_key": "***", "dedup_key": "i-1"}]
    logged = (tmp_path / "notifications.jsonl").read_text()
    assert "secret-key" not in logged and [json.loads(line)["path"] for line in logged.splitlines()] == [
        "/slack/watchkeeper-demo",
        "/v2/enqueue",
    ]
