"""The Watchkeeper HTTP service: intake, health and `/metrics`."""

from __future__ import annotations

import base64
import binascii
import hmac
import pathlib
import sys
from collections.abc import Awaitable, Callable
from functools import cache, partial
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tasks.logs import reference_frame
from watchkeeper.config import NAME_PATTERN, WatchkeeperConfig
from watchkeeper.intake.bodies import MAX_INT, BodyError, decoded_text, parse_json
from watchkeeper.intake.checks import ReferenceProfiles
from watchkeeper.intake.records import (
    BatchError,
    BatchTooLarge,
    FeatureLookupRecord,
    FeedbackRecord,
    PipelineRunRecord,
    PredictionRecord,
    Record,
    parse_batch,
)
from watchkeeper.log_lines import log_json_lines
from watchkeeper.runtime.nudges import nudge
from watchkeeper.service.edge import EdgeMetrics, untraced
from watchkeeper.service.group_commit import GroupCommit
from watchkeeper.service.metrics import (
    Exposition,
    LatencyExemplars,
    histogram_bounds,
    store_registry,
    union_registry,
)
from watchkeeper.service.on_call import IncidentId, StorableText, answer_and_resume, on_call_router
from watchkeeper.service.openapi import Components, MarkdownResponse, errors, examples
from watchkeeper.service.people import ANONYMOUS, People, Person
from watchkeeper.service.ui import ui_router
from watchkeeper.settings import REPO_ROOT, Credentials, Role, Settings
from watchkeeper.store import Store, lifecycle
from watchkeeper.store.actions import (
    automation_report,
    list_actions,
    remediation_on,
    set_remediation,
)
from watchkeeper.store.alerts import (
    NotificationRefused,
    WebhookNotification,
    parse_notification,
    store_notification,
)
from watchkeeper.store.incidents import incident_detail, list_alerts, list_incidents, with_trace_links
from watchkeeper.store.intake import (
    IntakeRules,
    feature_lookup_writer,
    feedback_writer,
    pipeline_run_writer,
    prediction_writer,
)
from watchkeeper.store.paging import CursorError, Page
from watchkeeper.store.reports import list_reports, report_html
from watchkeeper.store.samples import Sampling
from watchkeeper.store.schema import AlertStatus, IncidentStatus
from watchkeeper.tracing import configure_tracing, current_traceparent, tracer


class RemediationSwitch(BaseModel):
    enabled: bool


class ApprovalAnswer(BaseModel):
    approved: bool
    comment: StorableText = Field(default="", max_length=2000)


# Intake batches parsing or writing at once in one service process (see `intake_threads`): one
# group-commit writer per kind of record, and parsing. One Python process uses one core, so more
# threads would only contend for its interpreter lock with the alert webhook, scrapes and health
# checks, each of which waits for it after every database round trip.
INTAKE_THREADS = 4
# How long a busy thread keeps the interpreter lock while another waits (Python's default: 5 ms).
# Parsing threads are busy; an Alertmanager notification's thread waits for the lock after each of
# its database round trips.
SWITCH_INTERVAL_SECONDS = 0.001
NO_CREDENTIALS = Credentials()
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")]


def paged(name: str, read: Callable[[], Page[dict[str, Any]]]) -> JSONResponse:
    """A list endpoint's answer: `{name: [...], "next_cursor": ...}`; a foreign cursor is a 422."""
    try:
        result = read()
    except CursorError as exc:
        return JSONResponse({"error": str(exc), "field": "cursor"}, status.HTTP_422_UNPROCESSABLE_CONTENT)
    return JSONResponse({name: result.items, "next_cursor": result.next_cursor})


# Row ids are 64-bit: a larger one is refused as a 422, not sent to the store to overflow there.
ReportId = Annotated[int, Path(ge=1, le=MAX_INT)]
ModelName = Annotated[str | None, Query(alias="model", pattern=NAME_PATTERN, description="Only this model's")]


def resume_paused_run(run_id: str, run_input: dict[str, Any]) -> None:
    """Resume a handle-alerts run paused for approval, through the Prefect API (PREFECT_API_URL).

    Without PREFECT_API_URL, Prefect would start an ephemeral server of its own (which knows no
    run); the approval is recorded in the store either way, and the paused run settles it when its
    pause times out."""
    from prefect import resume_flow_run
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise RuntimeError("PREFECT_API_URL is not set: the paused run was not resumed")

    resume_flow_run(run_id, run_input=run_input)


RUNBOOKS = REPO_ROOT / "infra" / "prometheus" / "runbooks.md"


def runbook_section(name: str) -> str | None:
    """The `## name` section of infra/prometheus/runbooks.md, heading included."""
    sections = RUNBOOKS.read_text().split("\n## ")
    return next((f"## {s.strip()}\n" for s in sections[1:] if s.split("\n", 1)[0].strip() == name), None)


async def read_body_text(request: Request, limit: int) -> str:
    """The request body as text (see `watchkeeper.intake.bodies.decoded_text`), refusing before reading it
    all when it is larger than `limit` bytes."""
    too_large = BodyError(f"the body is larger than {limit} bytes", status=413)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return decoded_text(b"".join(chunks), request.headers.get("content-encoding"), limit)


def refused(exc: BodyError) -> JSONResponse:
    return JSONResponse(exc.as_detail(), exc.status)


def http_error(_request: Request, exc: Exception) -> JSONResponse:
    """An HTTPException's detail as the body itself ({"error": ...}), like every other refusal
    (Starlette's class: FastAPI raises it too, for a body it cannot parse)."""
    assert isinstance(exc, StarletteHTTPException)
    body = exc.detail if isinstance(exc.detail, dict) else {"error": str(exc.detail)}
    return JSONResponse(body, exc.status_code, headers=exc.headers)


def store_down(_request: Request, exc: Exception) -> JSONResponse:
    """Any read or write the store could not serve: 503, worth a retry, never a bare 500."""
    return JSONResponse(
        {"error": f"the store is unavailable: {type(exc).__name__}"}, status.HTTP_503_SERVICE_UNAVAILABLE
    )


def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for typed parameters and bodies, naming the field without echoing the input
    (a non-finite number in it could not be serialised, and would turn the 422 into a 500)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    field = ".".join(str(part) for part in first["loc"]) or None
    return JSONResponse({"error": str(first["msg"]), "field": field}, status.HTTP_422_UNPROCESSABLE_CONTENT)


def store_unavailable(what: str, exc: SQLAlchemyError) -> JSONResponse:
    """503, so that the sender retries: nothing of `what` was stored."""
    return JSONResponse(
        {"error": f"the store could not commit {what}; nothing was stored: {type(exc).__name__}"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
    )


def _matches(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode(), expected.encode())


def basic_credentials(presented: str) -> str:
    """HTTP basic's `user:password`, decoded; empty when it is not base64 of UTF-8."""
    try:
        return base64.b64decode(presented, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""


def credentials_guard(role: Role) -> Callable[..., Awaitable[str]]:
    """A dependency requiring the role's credentials (`Bearer <token>`, or HTTP basic `user:password`
    where the role has it) when any is configured; it returns who the caller is, for the audit trail.

    Comparisons take constant time, so a wrong guess does not reveal how much of it was right.
    Async, so FastAPI runs it in the event loop: a plain function would cost every request a trip
    to the thread pool and back.
    """

    async def require_credentials(authorization: Annotated[str | None, Header()] = None) -> str:
        if not role.required:
            return role.identity("none")
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and _matches(presented, role.bearer):
            return role.identity("bearer")
        if scheme.lower() == "basic":
            decoded = basic_credentials(presented)
            if _matches(decoded, role.basic):
                return role.identity("basic", decoded.partition(":")[0])
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail={"error": f"valid {role.name} credentials are required"},
            headers={"WWW-Authenticate": "Bearer"},
        )

    return require_credentials


def person_guard(people: People, acting: bool = False) -> Callable[..., Awaitable[Person]]:
    """A dependency naming the person asking, from their bearer token or HTTP basic name and
    password; `acting` also requires the operator role (a viewer gets 403). With no credential
    configured at all, everyone is `anonymous (loopback)`."""

    async def require_person(authorization: Annotated[str | None, Header()] = None) -> Person:
        if not people.required:
            return ANONYMOUS
        scheme, _, presented = (authorization or "").partition(" ")
        person = None
        if scheme.lower() == "bearer":
            person = people.by_token(presented)
        elif scheme.lower() == "basic":
            name, _, password = basic_credentials(presented).partition(":")
            person = await anyio.to_thread.run_sync(people.by_password, name, password) if name else None
        if person is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail={"error": "valid operator or viewer credentials are required"},
                headers={"WWW-Authenticate": "Bearer"},
            )
        if acting and not person.can_act:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail={"error": person.refusal},
            )
        return person

    return require_person


def serving_process() -> None:
    """What a process of the service sets for itself before it serves."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    log_json_lines("service")
    configure_tracing("service")


def service_from_environment() -> FastAPI:
    """The service as `watchkeeper serve` builds it, for each of its processes (uvicorn's workers
    start from the environment; the parent has checked credentials and upgraded the store)."""
    serving_process()
    settings = Settings()
    return service_for(settings, settings.monitoring, settings.open_store())


def service_for(settings: Settings, config: WatchkeeperConfig, store: Store) -> FastAPI:
    """The service as the settings configure it, in one process or in each of several."""
    return create_app(
        config,
        store,
        settings.credentials,
        alertmanager_url=settings.alertmanager_url,
        nudged_in=settings.run_dir,
    )


def create_app(
    config: WatchkeeperConfig,
    store: Store,
    credentials: Credentials = NO_CREDENTIALS,
    resume_run: Callable[[str, dict[str, Any]], None] = resume_paused_run,
    alertmanager_url: str | None = None,
    nudged_in: pathlib.Path | None = None,
) -> FastAPI:
    """Each role's credentials guard its endpoints: intake (predictions, feedback, pipeline runs,
    feature lookups), the Alertmanager webhook, operators (reads, the kill switch, approvals). The
    Prefect runs the intake owes are started by the warm executor (`watchkeeper executor`), not here;
    the executors listening in `nudged_in` are nudged when one is owed (`runtime/nudges.py`)."""
    app = FastAPI(title="Watchkeeper", version="0.1.0", telemetry={"exclude": untraced})
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(SQLAlchemyError, store_down)
    components = Components()
    components.install(app)
    model_names = [m.name for m in config.models]
    pipeline_names = [p.name for p in config.pipelines]
    write_errors = errors(400, 401, 413, 415, 422, 503)
    feature_store_names = [f.name for f in config.feature_stores]
    example = examples(
        model_names[0] if model_names else "model",
        pipeline_names[0] if pipeline_names else "pipeline",
        *[(f.name, f.views[0].name) for f in config.feature_stores[:1]],
    )
    read_errors = errors(401, 422, 503)
    profiles = ReferenceProfiles(config, partial(reference_frame, store, sampling=Sampling.of(config)))
    exemplars = LatencyExemplars(histogram_bounds(config))
    registry = store_registry(store, config, profiles, exemplars)
    process_registry = CollectorRegistry(auto_describe=False)
    everything = union_registry(registry, process_registry)
    edge = EdgeMetrics(process_registry)
    edge.install(app)
    intake_authorized = [Depends(credentials_guard(credentials.intake))]
    alertmanager_authorized = [Depends(credentials_guard(credentials.alertmanager))]
    people = People(config.users, credentials.operator)
    operator = person_guard(people, acting=True)
    authorized = [Depends(person_guard(people))]
    alertmanager = alertmanager_url or config.remediation.alertmanager_url
    app.include_router(on_call_router(store, config, operator, alertmanager))
    app.include_router(ui_router(store, config, people, alertmanager, resume_run))
    head = store.head_revision()

    rules = IntakeRules.of(config, profiles)
    pipeline_buckets = {p.name: p.latency_buckets for p in config.pipelines}.__getitem__

    @cache
    def intake_threads() -> anyio.CapacityLimiter:
        """Batches parse and write in threads of their own, at most INTAKE_THREADS at once: fifty
        model services posting together would otherwise hold every thread of the pool, and an
        Alertmanager notification (or a scrape) would wait behind them. Batches beyond that wait
        in the event loop, holding no thread. Made on first use, inside the event loop."""
        return anyio.CapacityLimiter(INTAKE_THREADS)

    predictions = GroupCommit(store, prediction_writer(rules), intake_threads)
    feedback = GroupCommit(store, feedback_writer(rules), intake_threads, after=predictions)
    pipeline_runs = GroupCommit(store, pipeline_run_writer(pipeline_buckets), intake_threads)
    lookup_buckets = {f.name: f.latency_buckets for f in config.feature_stores}.__getitem__
    feature_lookups = GroupCommit(store, feature_lookup_writer(lookup_buckets), intake_threads)

    async def intake(request: Request, record_type: type[Record], writer: GroupCommit) -> JSONResponse:
        try:
            body = await read_body_text(request, config.intake.max_body_bytes)
            records = await anyio.to_thread.run_sync(
                partial(
                    parse_batch,
                    body,
                    request.headers.get("content-type"),
                    record_type,
                    config,
                    config.intake.max_records,
                ),
                limiter=intake_threads(),
            )
        except BodyError as exc:
            return refused(exc)
        except BatchTooLarge as exc:
            limits = f"{config.intake.max_body_bytes} bytes and {config.intake.max_records} records"
            return JSONResponse(
                {"error": f"{exc.message}: the limits are {limits}"}, status.HTTP_413_CONTENT_TOO_LARGE
            )
        except BatchError as exc:
            return JSONResponse(exc.as_detail(), status.HTTP_422_UNPROCESSABLE_CONTENT)
        try:
            stored = await writer.store(records)
        except SQLAlchemyError as exc:
            return store_unavailable("the batch", exc)
        if record_type is PredictionRecord:
            exemplars.observe(records)  # type: ignore[arg-type]
        return JSONResponse(
            {"received": stored.received, "stored": stored.stored, "duplicates": stored.duplicates}
        )

    def batch_of(record_type: type[Record], names: list[str], kind: str) -> dict[str, Any]:
        field = record_type.subject_field
        return components.body(
            list[record_type], example[kind], {field: names}, minItems=1, maxItems=config.intake.max_records
        )

    @app.post(
        "/v1/predictions",
        dependencies=intake_authorized,
        responses=write_errors,
        openapi_extra=batch_of(PredictionRecord, model_names, "predictions"),
    )
    async def post_predictions(request: Request) -> JSONResponse:
        """Store a batch of predictions (JSON array or NDJSON), whole or not at all."""
        return await intake(request, PredictionRecord, predictions)

    @app.post(
        "/v1/feedback",
        dependencies=intake_authorized,
        responses=write_errors,
        openapi_extra=batch_of(FeedbackRecord, model_names, "feedback"),
    )
    async def post_feedback(request: Request) -> JSONResponse:
        """Store a batch of delayed ground-truth labels (JSON array or NDJSON), whole or not at all."""
        return await intake(request, FeedbackRecord, feedback)

    @app.post(
        "/v1/pipeline-runs",
        dependencies=intake_authorized,
        responses=write_errors,
        openapi_extra=batch_of(PipelineRunRecord, pipeline_names, "pipeline-runs"),
    )
    async def post_pipeline_runs(request: Request) -> JSONResponse:
        """Store pipeline stage runs (duration, records, errors), idempotent by pipeline, run id and stage."""
        return await intake(request, PipelineRunRecord, pipeline_runs)

    @app.post(
        "/v1/feature-lookups",
        dependencies=intake_authorized,
        responses=write_errors,
        openapi_extra=batch_of(FeatureLookupRecord, feature_store_names, "feature-lookups"),
    )
    async def post_feature_lookups(request: Request) -> JSONResponse:
        """Store feature-store lookups (latency, keys, failed keys, newest materialisation served),
        idempotent by feature store, view and request id."""
        return await intake(request, FeatureLookupRecord, feature_lookups)

    @app.post(
        "/v1/alertmanager",
        dependencies=alertmanager_authorized,
        responses=write_errors,
        openapi_extra=components.body(WebhookNotification, example["alertmanager"]),
    )
    async def post_alertmanager(request: Request) -> JSONResponse:
        """Alertmanager's webhook (version 4; Grafana's, version 1): stored before the answer, so no
        accepted alert is lost. Malformed alerts are kept aside and listed in `rejected`; the answer is
        a 4xx only when nothing in the body is usable (Alertmanager drops what gets a 4xx).

        Each notification is a trace (continuing the request's `traceparent` when it has one): the
        run it owes, its incident and its actions follow under this span."""
        with tracer().start_as_current_span(
            "alertmanager notification", context=propagate.extract(request.headers), kind=SpanKind.SERVER
        ) as span:
            answer = await alertmanager_notification(request)
            span.set_attribute("http.response.status_code", answer.status_code)
            return answer

    async def alertmanager_notification(request: Request) -> JSONResponse:
        try:
            payload = parse_json(await read_body_text(request, config.intake.max_body_bytes))
            notification, kept, rejected = parse_notification(payload)
        except BodyError as exc:
            return refused(exc)
        except NotificationRefused as exc:
            return JSONResponse(exc.as_detail(), status.HTTP_422_UNPROCESSABLE_CONTENT)
        span = trace.get_current_span()
        span.set_attribute("alertmanager.receiver", notification.receiver)
        span.set_attribute("alertmanager.alerts", len(notification.alerts))
        try:
            stored = await run_in_threadpool(
                store_notification, store, notification, kept, rejected, current_traceparent()
            )
        except SQLAlchemyError as exc:
            return store_unavailable("the notification", exc)
        span.set_attribute("watchkeeper.alerts.new", stored.new_alerts)
        span.set_attribute("watchkeeper.run_pending", stored.run_key is not None)
        if stored.run_key is not None and nudged_in is not None:
            nudge(nudged_in)
        edge.alerts_rejected.inc(len(rejected))
        return JSONResponse(stored.as_json())

    @app.get("/v1/alerts", dependencies=authorized, responses=read_errors)
    def get_alerts(
        status_filter: Annotated[AlertStatus | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Cursor = None,
    ) -> JSONResponse:
        """Stored alerts, newest first; `next_cursor` fetches the next page."""
        return paged("alerts", lambda: list_alerts(store, status_filter, limit, cursor))

    @app.get("/v1/incidents", dependencies=authorized, responses=read_errors)
    def get_incidents(
        status_filter: Annotated[IncidentStatus | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Cursor = None,
    ) -> JSONResponse:
        """Incidents, most recently active first, each with its suggested root cause; `next_cursor`
        fetches the next page."""
        return paged("incidents", lambda: list_incidents(store, status_filter, limit, cursor))

    @app.get("/v1/incidents/{incident_id}", dependencies=authorized, responses=errors(401, 404, 422, 503))
    def get_incident(incident_id: IncidentId) -> JSONResponse:
        """One incident: members with reason and confidence, root-cause ranking, timeline."""
        detail = incident_detail(store, incident_id, Sampling.of(config), config.manual_actions)
        if detail is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail={"error": f"no incident {incident_id}"})
        return JSONResponse(with_trace_links(detail, config.traces))

    @app.get("/v1/actions", dependencies=authorized, responses=read_errors)
    def get_actions(
        incident: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Cursor = None,
    ) -> JSONResponse:
        """The remediation audit trail: every decision, taken or skipped, with reason, inputs and
        result; `next_cursor` fetches the next page."""
        return paged("actions", lambda: list_actions(store, incident, limit, cursor))

    @app.get("/v1/actions/report", dependencies=authorized, responses=read_errors)
    def get_report(hours: Annotated[int, Query(ge=1, le=24 * 30)] = 24) -> JSONResponse:
        """The automation report: success rate, breakdown by action, recent actions."""
        return JSONResponse(automation_report(store, hours))

    @app.get("/v1/reports", dependencies=authorized, responses=read_errors)
    def get_reports(
        model_name: ModelName = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: Cursor = None,
    ) -> JSONResponse:
        """Model reports, newest period first, each with its key figures; `GET /v1/reports/{id}`
        serves one as HTML. `next_cursor` fetches the next page."""
        return paged("reports", lambda: list_reports(store, model_name, limit, cursor))

    @app.get(
        "/v1/reports/{report_id}",
        dependencies=authorized,
        response_class=HTMLResponse,
        responses=errors(401, 404, 422, 503),
    )
    def get_model_report(report_id: ReportId) -> Response:
        """One model report: a self-contained HTML page with its charts (plotly.js inlined)."""
        page = report_html(store, report_id)
        if page is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail={"error": f"no report {report_id}"})
        return HTMLResponse(page, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/v1/remediation", dependencies=authorized, responses=read_errors)
    def get_remediation() -> JSONResponse:
        with store.reading() as session:
            return JSONResponse({"enabled": remediation_on(session)})

    @app.put("/v1/remediation", responses=errors(400, 401, 403, 422, 503))
    def put_remediation(
        switch: RemediationSwitch,
        person: Person = Depends(operator),  # noqa: B008 - FastAPI's dependency
    ) -> JSONResponse:
        """The global kill switch, kept in the store so it survives restarts and holds for replicas;
        recorded as changed by the person who changed it."""
        set_remediation(store, switch.enabled, person.name)
        return JSONResponse({"enabled": switch.enabled, "changed_by": person.name})

    @app.post("/v1/incidents/{incident_id}/approval", responses=errors(400, 401, 403, 409, 422, 503))
    def post_approval(
        incident_id: IncidentId,
        answer: ApprovalAnswer,
        person: Person = Depends(operator),  # noqa: B008 - FastAPI's dependency
    ) -> JSONResponse:
        """Approve or reject the actions an incident's playbook waits for, then resume its paused run
        so the approved actions run now (the reconciler runs them if the run cannot be resumed)."""
        try:
            answered = answer_and_resume(
                store, incident_id, answer.approved, answer.comment, person.name, resume_run
            )
        except lifecycle.LifecycleError as exc:
            raise HTTPException(exc.status, detail={"error": exc.message}) from exc
        return JSONResponse(answered)

    @app.get("/healthz", responses=errors(503))
    def healthz() -> JSONResponse:
        try:
            store.ping()
            revision = store.current_revision()
        except SQLAlchemyError as exc:
            unreachable = f"unreachable: {type(exc).__name__}"
            return JSONResponse(
                {"error": f"the store is {unreachable}", "status": "unhealthy", "store": unreachable},
                status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        body = {"status": "ok", "store": "ok", "revision": revision, "head": head}
        if revision != head:
            error = f"the store's schema is at revision {revision}, not {head}: run `watchkeeper db upgrade`"
            unhealthy = {**body, "status": "unhealthy", "error": error}
            return JSONResponse(unhealthy, status.HTTP_503_SERVICE_UNAVAILABLE)
        return JSONResponse(body)

    @app.get("/runbooks/{name}", response_class=MarkdownResponse, responses=errors(404))
    def runbook(name: str) -> Response:
        """The runbook section an alert's runbook_url names, as markdown."""
        text = runbook_section(name)
        if text is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail={"error": f"no runbook named {name!r}"})
        return Response(text, media_type="text/markdown; charset=utf-8")

    def exposition(of: Exposition, accept: str | None) -> Response:
        """The Prometheus text format, or OpenMetrics (with the latency buckets' exemplars) to a
        scraper that asks for it, as Prometheus does."""
        body, content_type = of(accept)
        return Response(body, media_type=content_type)

    everything_exposed, store_exposed, process_exposed = map(
        Exposition, (everything, registry, process_registry)
    )

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(accept: Annotated[str | None, Header()] = None) -> Response:
        """Both of the parts below: what one service scraped alone exports."""
        return exposition(everything_exposed, accept)

    @app.get("/metrics/store", response_class=PlainTextResponse)
    def store_metrics(accept: Annotated[str | None, Header()] = None) -> Response:
        """What the store says, alike from every replica: scraped once, through the load balancer,
        so that two replicas never double a sum."""
        return exposition(store_exposed, accept)

    @app.get("/metrics/process", response_class=PlainTextResponse)
    def process_metrics(accept: Annotated[str | None, Header()] = None) -> Response:
        """This process's own requests: scraped from each replica, and summed."""
        return exposition(process_exposed, accept)

    return app
