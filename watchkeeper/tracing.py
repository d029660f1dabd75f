"""Traces with OpenTelemetry: each Alertmanager notification is one trace, from the webhook through
its incident and its `handle-alerts` run (Prefect's own run and task spans, parented by the
notification's `traceparent`, which the outbox carries to the run's labels) to each action's
outgoing call, which carries the trace on to its target as a W3C `traceparent` header.

The service and the executor always trace (so an incident, a run's logs and an action's target
share a trace id), and export only where the standard variables name a receiver
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, with
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`...): over OTLP/HTTP, in batches, from a
background thread. `OTEL_SDK_DISABLED=true` turns tracing off.
"""

from __future__ import annotations

import os

from opentelemetry import propagate, trace
from opentelemetry.context import Context

TRACER_NAME = "watchkeeper"
_configured: set[str] = set()


def exporting() -> bool:
    """Whether the environment names an OTLP receiver for traces."""
    return any(
        os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_tracing(component: str) -> None:
    """This process records spans, as service `OTEL_SERVICE_NAME` or `watchkeeper-<component>`,
    and sends them to the configured receiver if there is one. Once per process."""
    if _configured or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or f"watchkeeper-{component}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporting():
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured.add(component)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, None outside one."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), None outside a span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def with_trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with the current span's `traceparent` (and `tracestate`), for an outgoing call."""
    carrier = dict(headers)
    propagate.inject(carrier)
    return carrier


def context_of(traceparent: str | None) -> Context | None:
    """The context a `traceparent` continues, None for none."""
    return propagate.extract({"traceparent": traceparent}) if traceparent else None
