"""The Watchkeeper HTTP service: intake, health and `/metrics`."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from watchkeeper.config import WatchkeeperConfig
from watchkeeper.dispatcher import OutboxDispatcher
from watchkeeper.records import (
    BatchError,
    BatchTooLarge,
    FeedbackRecord,
    PipelineRunRecord,
    PredictionRecord,
    Record,
    parse_batch,
)
from watchkeeper.service.metrics import store_registry
from watchkeeper.settings import REPO_ROOT
from watchkeeper.store import Store
from watchkeeper.store.actions import automation_report, list_actions, remediation_on, set_remediation
from watchkeeper.store.alerts import WebhookNotification, store_notification
from watchkeeper.store.incidents import (
    AlertStatus,
    IncidentStatus,
    incident_detail,
    list_alerts,
    list_incidents,
)
from watchkeeper.store.intake import StoredBatch, store_feedback, store_pipeline_runs, store_predictions


class RemediationSwitch(BaseModel):
    enabled: bool
    changed_by: str = Field(default="api", max_length=128)


RUNBOOKS = REPO_ROOT / "infra" / "prometheus" / "runbooks.md"


def runbook_section(name: str) -> str | None:
    """The `## name` section of infra/prometheus/runbooks.md, heading included."""
    sections = RUNBOOKS.read_text().split("\n## ")
    return next((f"## {s.strip()}\n" for s in sections[1:] if s.split("\n", 1)[0].strip() == name), None)


class BodyTooLarge(Exception):
    pass


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refusing before reading it all when it is larger than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def store_unavailable(what: str, exc: SQLAlchemyError) -> JSONResponse:
    """503, so that the sender retries: nothing of `what` was stored."""
    return JSONResponse(
        {"error": f"the store could not commit {what}; nothing was stored: {type(exc).__name__}"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
    )


def _matches(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode(), expected.encode())


def credentials_guard(token: str | None, basic: str | None = None) -> Callable[..., None]:
    """A dependency requiring `Bearer <token>` or HTTP basic `user:password` when either is configured.

    Comparisons take constant time, so a wrong guess does not reveal how much of it was right.
    """

    def require_credentials(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None and basic is None:
            return
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and _matches(presented, token):
            return
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(presented, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            if _matches(decoded, basic):
                return
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail={"error": "valid credentials are required"},
            headers={"WWW-Authenticate": "Bearer"},
        )

    return require_credentials


def create_app(
    config: WatchkeeperConfig,
    store: Store,
    api_token: str | None = None,
    webhook_token: str | None = None,
    webhook_basic: str | None = None,
    dispatcher: OutboxDispatcher | None = None,
) -> FastAPI:
    """`webhook_token` and `webhook_basic` ("user:password") guard the Alertmanager webhook; the
    `dispatcher`, when given, runs beside the service and starts the Prefect runs the intake owes."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if dispatcher is not None:
            dispatcher.start()
        yield
        if dispatcher is not None:
            dispatcher.stop()

    app = FastAPI(title="Watchkeeper", version="0.1.0", lifespan=lifespan)
    registry = store_registry(store)
    authorized = [Depends(credentials_guard(api_token))]
    alertmanager_authorized = [Depends(credentials_guard(webhook_token, webhook_basic))]
    head = store.head_revision()

    latency_buckets = {m.name: m.latency_buckets for m in config.models}.__getitem__
    pipeline_buckets = {p.name: p.latency_buckets for p in config.pipelines}.__getitem__

    async def intake(
        request: Request, record_type: type[Record], write: Callable[[Store, Sequence[Any]], StoredBatch]
    ) -> JSONResponse:
        try:
            body = await read_limited_body(request, config.intake.max_body_bytes)
            records = await run_in_threadpool(
                parse_batch,
                body,
                request.headers.get("content-type"),
                record_type,
                config,
                config.intake.max_records,
            )
        except (BodyTooLarge, BatchTooLarge) as exc:
            limits = f"{config.intake.max_body_bytes} bytes and {config.intake.max_records} records"
            message = exc.message if isinstance(exc, BatchTooLarge) else "the body is too large"
            return JSONResponse(
                {"error": f"{message}: the limits are {limits}"}, status.HTTP_413_CONTENT_TOO_LARGE
            )
        except BatchError as exc:
            return JSONResponse(exc.as_detail(), status.HTTP_422_UNPROCESSABLE_CONTENT)
        try:
            stored = await run_in_threadpool(write, store, records)
        except SQLAlchemyError as exc:
            return store_unavailable("the batch", exc)
        return JSONResponse(
            {"received": stored.received, "stored": stored.stored, "duplicates": stored.duplicates}
        )

    @app.post("/v1/predictions", dependencies=authorized)
    async def post_predictions(request: Request) -> JSONResponse:
        """Store a batch of predictions (JSON array or NDJSON), whole or not at all."""
        return await intake(
            request, PredictionRecord, partial(store_predictions, latency_buckets=latency_buckets)
        )

    @app.post("/v1/feedback", dependencies=authorized)
    async def post_feedback(request: Request) -> JSONResponse:
        """Store a batch of delayed ground-truth labels (JSON array or NDJSON), whole or not at all."""
        return await intake(request, FeedbackRecord, store_feedback)

    @app.post("/v1/pipeline-runs", dependencies=authorized)
    async def post_pipeline_runs(request: Request) -> JSONResponse:
        """Store pipeline stage runs (duration, records, errors), idempotent by pipeline, run id and stage."""
        return await intake(
            request, PipelineRunRecord, partial(store_pipeline_runs, duration_buckets=pipeline_buckets)
        )

    @app.post("/v1/alertmanager", dependencies=alertmanager_authorized)
    async def post_alertmanager(request: Request) -> JSONResponse:
        """Alertmanager's webhook (version 4): stored before the answer, so no accepted alert is lost."""
        try:
            body = await read_limited_body(request, config.intake.max_body_bytes)
        except BodyTooLarge:
            limit = config.intake.max_body_bytes
            return JSONResponse(
                {"error": f"the body is larger than {limit} bytes"}, status.HTTP_413_CONTENT_TOO_LARGE
            )
        try:
            payload = json.loads(body)
            notification = WebhookNotification.model_validate(payload)
        except json.JSONDecodeError as exc:
            return JSONResponse({"error": f"not valid JSON: {exc.msg}", "field": None}, 422)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or None
            return JSONResponse({"error": first["msg"], "field": field}, 422)
        try:
            stored = await run_in_threadpool(store_notification, store, notification, payload)
        except SQLAlchemyError as exc:
            return store_unavailable("the notification", exc)
        if dispatcher is not None and stored.run_key is not None:
            dispatcher.wake.set()
        return JSONResponse(stored.as_json())

    @app.get("/v1/alerts", dependencies=authorized)
    def get_alerts(
        status_filter: Annotated[AlertStatus | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        """Stored alerts, newest first."""
        return JSONResponse({"alerts": list_alerts(store, status_filter, limit)})

    @app.get("/v1/incidents", dependencies=authorized)
    def get_incidents(
        status_filter: Annotated[IncidentStatus | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        """Incidents, most recently active first, each with its suggested root cause."""
        return JSONResponse({"incidents": list_incidents(store, status_filter, limit)})

    @app.get("/v1/incidents/{incident_id}", dependencies=authorized)
    def get_incident(incident_id: int) -> JSONResponse:
        """One incident: members with reason and confidence, root-cause ranking, timeline."""
        detail = incident_detail(store, incident_id)
        if detail is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail={"error": f"no incident {incident_id}"})
        return JSONResponse(detail)

    @app.get("/v1/actions", dependencies=authorized)
    def get_actions(
        incident: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        """The remediation audit trail: every decision, taken or skipped, with reason, inputs and result."""
        return JSONResponse({"actions": list_actions(store, incident, limit)})

    @app.get("/v1/actions/report", dependencies=authorized)
    def get_report(hours: Annotated[int, Query(ge=1, le=24 * 30)] = 24) -> JSONResponse:
        """The automation report: success rate, breakdown by action, recent actions."""
        return JSONResponse(automation_report(store, hours))

    @app.get("/v1/remediation", dependencies=authorized)
    def get_remediation() -> JSONResponse:
        with store.reading() as session:
            return JSONResponse({"enabled": remediation_on(session)})

    @app.put("/v1/remediation", dependencies=authorized)
    def put_remediation(switch: RemediationSwitch) -> JSONResponse:
        """The global kill switch, kept in the store so it survives restarts and holds for replicas."""
        set_remediation(store, switch.enabled, switch.changed_by)
        return JSONResponse({"enabled": switch.enabled})

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            store.ping()
            revision = store.current_revision()
        except SQLAlchemyError as exc:
            return JSONResponse(
                {"status": "unhealthy", "store": f"unreachable: {type(exc).__name__}"},
                status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        healthy = revision == head
        body = {"status": "ok" if healthy else "unhealthy", "store": "ok", "revision": revision, "head": head}
        return JSONResponse(body, status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.get("/runbooks/{name}")
    def runbook(name: str) -> Response:
        """The runbook section an alert's runbook_url names, as markdown."""
        text = runbook_section(name)
        if text is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail={"error": f"no runbook named {name!r}"})
        return Response(text, media_type="text/markdown; charset=utf-8")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
