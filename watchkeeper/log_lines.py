"""Logs as JSON lines: one object a record, on stderr, for any log shipper (Logstash, Vector,
Promtail, Fluent Bit) to take without a parsing rule.

Fields: `time` (RFC 3339, UTC, milliseconds), `level`, `component` (service, executor,
notification-sink, demo-traffic), `logger`, `message`; `trace_id` and `span_id` (hex, as
OpenTelemetry and W3C `traceparent` write them) when the record was made inside a recording span;
`flow_run_id`, `flow_run_name`, `flow_name`, `task_run_id`, `task_run_name` on the records of a
Prefect run; `exception` with its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace

# What Prefect's run loggers add to each record of a flow or task run.
RUN_FIELDS = ("flow_run_id", "flow_run_name", "flow_name", "task_run_id", "task_run_name")


class JsonLines(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        for name in RUN_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def log_json_lines(component: str, level: int = logging.INFO) -> None:
    """Every record of this process to stderr as a JSON line: the root logger's, and those of the
    loggers that print for themselves (Prefect's console handlers, uvicorn's), whose stream
    handlers this one replaces. Handlers that ship elsewhere (Prefect's, to its API) stay."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines(component))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # A line for every HTTP request made (the client's batches, Prefect's API calls) buries the rest.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
    for logger in list(logging.root.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue
        kept = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)]
        if len(kept) < len(logger.handlers):
            # A logger that propagates reaches the root's handler anyway: one line a record.
            logger.handlers = kept if logger.propagate else [*kept, handler]
