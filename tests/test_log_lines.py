"""Logs as JSON lines: the fields a log shipper reads, from the real processes' loggers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from opentelemetry import trace

from watchkeeper.log_lines import JsonLines

PROGRAM = """
import logging, sys
from prefect import flow, get_run_logger
from watchkeeper.log_lines import log_json_lines

@flow(name="log-lines-check")
def check():
    get_run_logger().info("inside the flow")

log_json_lines("executor")
logging.getLogger("watchkeeper.runtime.executor").warning("plain %s", "record")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("watchkeeper").exception("it failed")
check()
"""


def test_every_line_of_a_process_with_prefect_runs_is_one_json_object(tmp_path) -> None:  # noqa: ANN001
    """Prefect's own console handlers print their text unless replaced: every line on stderr must
    parse, once, and a flow run's record carries its run's ids."""
    env = {"PREFECT_HOME": str(tmp_path), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300, env={**_base(), **env}
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    plain = [line for line in lines if line["message"] == "plain record"]
    assert plain == [
        {
            "time": plain[0]["time"],
            "level": "warning",
            "component": "executor",
            "logger": "watchkeeper.runtime.executor",
            "message": "plain record",
        }
    ]
    assert plain[0]["time"].endswith("+00:00")
    failed = next(line for line in lines if line["message"] == "it failed")
    assert "ZeroDivisionError" in failed["exception"]
    inside = [line for line in lines if line["message"] == "inside the flow"]
    assert len(inside) == 1 and inside[0]["flow_name"] == "log-lines-check" and inside[0]["flow_run_id"]


def _base() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def test_a_record_made_in_a_span_carries_its_trace() -> None:
    """As a W3C traceparent writes them: 32 and 16 hex digits, leading zeros kept."""
    record = logging.LogRecord("watchkeeper", logging.INFO, __file__, 1, "acting", None, None)
    context = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B71, is_remote=False
    )
    with trace.use_span(trace.NonRecordingSpan(context)):
        line = json.loads(JsonLines("executor").format(record))
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["span_id"] == "00000000b7ad6b71"
    assert "trace_id" not in json.loads(JsonLines("executor").format(record))
