"""The people on call's endpoints: acknowledge, assign, note, snooze, resolve by hand and tick a
checklist step, each as the person the credential names (`service/people.py`), each a
compare-and-set transition (`store/lifecycle.py`): 404 for no such incident, 409 when its state
refuses it (resolved, or acknowledged by someone else first), 403 for a viewer."""

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from watchkeeper.config import NAME_PATTERN, Duration, WatchkeeperConfig
from watchkeeper.intake.bodies import MAX_INT, text_problem
from watchkeeper.remediation import silences
from watchkeeper.service.openapi import errors
from watchkeeper.service.people import Person
from watchkeeper.store import Store, lifecycle
from watchkeeper.store.actions import answer_approval

IncidentId = Annotated[int, Path(ge=1, le=MAX_INT)]
LONGEST_SNOOZE = timedelta(days=7)


def _storable_text(text: str) -> str:
    problem = text_problem(text)
    if problem:
        raise ValueError(problem)
    return text


StorableText = Annotated[str, AfterValidator(_storable_text)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Assignment(Body):
    assignee: str = Field(
        pattern=NAME_PATTERN, description="A configured user's name (any name without users)"
    )


class Note(Body):
    text: StorableText = Field(min_length=1, max_length=4000)


class Snooze(Body):
    duration: Duration = Field(description="How long Watchkeeper's own repeat pages wait: '30m', '2h'")

    @field_validator("duration")
    @classmethod
    def _bounded(cls, duration: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= duration <= LONGEST_SNOOZE:
            raise ValueError("expected a duration from 1m to 7d")
        return duration


class Resolution(Body):
    reason: StorableText = Field(min_length=1, max_length=2000)


class Step(Body):
    step: StorableText = Field(min_length=1, max_length=500)


def answer_and_resume(
    store: Store,
    incident_id: int,
    approved: bool,
    comment: str,
    by: str,
    resume_run: Callable[[str, dict[str, Any]], None],
) -> dict[str, Any]:
    """Approve or reject the actions the incident's playbook waits for, then resume the paused runs
    so approved actions run now (the reconciler runs them if a run cannot be resumed)."""
    settled = answer_approval(store, incident_id, approved, comment, by)
    if not settled.rows:
        raise lifecycle.LifecycleError(409, f"incident {incident_id} has no actions awaiting approval")
    resumed, unresumed = [], {}
    for run_id in settled.runs:
        try:
            resume_run(run_id, {"approved": approved, "comment": comment})
            resumed.append(run_id)
        except Exception as exc:  # noqa: BLE001 - the decision is recorded; the reconciler acts on it
            unresumed[run_id] = f"{type(exc).__name__}: {exc}"[:500]
    return {
        "incident": incident_id,
        "verdict": settled.verdict,
        "actions": settled.rows,
        "by": by,
        "resumed_runs": resumed,
        "not_resumed": unresumed,
    }


def on_call_router(
    store: Store,
    config: WatchkeeperConfig,
    acting: Callable[..., Awaitable[Person]],
    alertmanager_url: str | None,
) -> APIRouter:
    router = APIRouter(prefix="/v1/incidents/{incident_id}", tags=["on call"])
    Acting = Annotated[Person, Depends(acting)]
    refusals = errors(400, 401, 403, 404, 409, 422, 503)
    users = [u.name for u in config.users]

    def answer(transition: Callable[[], lifecycle.Transition]) -> JSONResponse:
        try:
            return JSONResponse(transition().as_json())
        except lifecycle.LifecycleError as exc:
            raise HTTPException(exc.status, detail={"error": exc.message}) from exc

    @router.post("/acknowledge", responses=refusals)
    def acknowledge(incident_id: IncidentId, person: Acting) -> JSONResponse:
        """I have it: Watchkeeper's own repeat pages and escalations for it stop."""
        return answer(lambda: lifecycle.acknowledge(store, incident_id, person.name))

    @router.post("/assign", responses=refusals)
    def assign(incident_id: IncidentId, body: Assignment, person: Acting) -> JSONResponse:
        """Who owns it."""
        if users and body.assignee not in users:
            raise HTTPException(
                422,
                detail={
                    "error": f"unknown user {body.assignee!r}: expected one of {', '.join(users)}",
                    "field": "body.assignee",
                },
            )
        return answer(lambda: lifecycle.assign(store, incident_id, body.assignee, person.name))

    @router.post("/notes", responses=refusals)
    def add_note(incident_id: IncidentId, body: Note, person: Acting) -> JSONResponse:
        """A note on the timeline, for the next shift."""
        return answer(lambda: lifecycle.note(store, incident_id, body.text, person.name))

    @router.post("/snooze", responses=refusals)
    def snooze(incident_id: IncidentId, body: Snooze, person: Acting) -> JSONResponse:
        """Watchkeeper's own repeat pages and escalations wait this long."""
        return answer(lambda: lifecycle.snooze(store, incident_id, body.duration, person.name))

    @router.post("/resolve", responses=refusals)
    def resolve(incident_id: IncidentId, body: Resolution, person: Acting) -> JSONResponse:
        """Resolved by hand, with a reason; actions awaiting approval are rejected. An alert that
        fires again opens a new incident, which follows this one."""
        return answer(lambda: lifecycle.resolve(store, incident_id, body.reason, person.name))

    @router.post("/mute", responses=refusals)
    def mute(incident_id: IncidentId, person: Acting) -> JSONResponse:
        """Silence its firing alerts in Alertmanager until it resolves (Alertmanager's own receivers
        stop repeating them too); Watchkeeper expires the silences when it resolves."""
        if not alertmanager_url:
            raise HTTPException(
                409, detail={"error": "no Alertmanager is configured (WATCHKEEPER_ALERTMANAGER_URL)"}
            )
        try:
            return answer(lambda: silences.mute(store, config, alertmanager_url, incident_id, person.name))
        except silences.AlertmanagerUnavailable as exc:
            raise HTTPException(
                503, detail={"error": f"Alertmanager could not silence the alerts; nothing was muted: {exc}"}
            ) from exc

    @router.post("/checklist", responses=refusals)
    def tick(incident_id: IncidentId, body: Step, person: Acting) -> JSONResponse:
        """A step left to people (the playbook's `manual_actions`), done."""
        return answer(
            lambda: lifecycle.tick(store, incident_id, body.step, person.name, config.manual_actions)
        )

    return router
