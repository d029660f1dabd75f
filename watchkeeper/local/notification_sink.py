"""The local stack's stand-in for Slack and PagerDuty: it answers as they do and keeps what it got.

`watchkeeper up` starts it (`notification-sink`) and points the example's Slack webhook and
PagerDuty routing key at it unless the environment already names real ones, so the demo's
notifications and model reports land somewhere an operator can read: `GET /messages` (the last
100) and `notifications.jsonl` under the home. Loopback only; never a production component.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY_BYTES = 1024 * 1024
KEPT_IN_MEMORY = 100
LOG = logging.getLogger("watchkeeper.notification_sink")


class NotificationSink:
    def __init__(self, port: int, log: Path) -> None:
        self.log = log
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/healthz":
                    self._answer(200, {"ok": True})
                elif self.path == "/messages":
                    with sink._lock:
                        self._answer(200, list(sink.messages))
                else:
                    self._answer(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._answer(413, {"error": "body too large"})
                    return
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    self._answer(400, {"error": "expected a JSON body"})
                    return
                sink.keep(self.path, body)
                if self.path.startswith("/slack/"):
                    self._answer(200, "ok")
                elif self.path == "/v2/enqueue":
                    dedup = body.get("dedup_key") if isinstance(body, dict) else None
                    self._answer(202, {"status": "success", "message": "Event processed", "dedup_key": dedup})
                else:
                    self._answer(200, {"ok": True})

            def _answer(self, status: int, body: Any) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "text/plain" if isinstance(body, str) else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def keep(self, path: str, body: Any) -> None:
        """Keep the message; a PagerDuty routing key is a secret and is kept masked."""
        if isinstance(body, dict) and "routing_key" in body:
            body = {**body, "routing_key": "***"}
        entry = {"at": datetime.now(UTC).isoformat(), "path": path, "body": body}
        # The kind only: a Slack webhook's path is its secret.
        LOG.info("kept a %s message", path.strip("/").split("/", 1)[0] or "root")
        with self._lock:
            self.messages = [*self.messages[-(KEPT_IN_MEMORY - 1) :], entry]
            with self.log.open("a") as out:
                out.write(json.dumps(entry) + "\n")

    def serve_forever(self) -> None:
        self.server.serve_forever()
