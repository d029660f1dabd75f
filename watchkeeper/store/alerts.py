"""Alertmanager notifications into the store: every alert kept once, a resolution closes it.

Alertmanager re-sends the whole group on every notification and an Alertmanager cluster delivers
at least once, so an alert is identified by its fingerprint and startsAt, and a notification by a
digest of what it says. A notification that brings something new (a new firing alert, or a
resolution) records one pending `handle-alerts` run in the outbox, in the same transaction.

Alertmanager drops a notification answered 4xx, valid alerts included, so one malformed alert
does not cost its group: the valid ones are stored and the malformed ones kept aside with their
reason (`parse_notification`). Grafana-managed alerting posts the same body as version "1".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from watchkeeper.intake.bodies import BodyError, Timestamp, check_value, utc_in_range
from watchkeeper.store import Store
from watchkeeper.store.schema import Alert, AlertNotification, AlertStatus, FlowRunOutbox
from watchkeeper.times import utcnow

HANDLE_ALERTS = "handle-alerts/handle-alerts"
# Alertmanager marks "no end time" with the zero time.
_UNSET_YEAR = 1


# Labels stored in columns of their own, with the columns' lengths.
LABEL_LENGTHS = {"alertname": 256, "severity": 32, "service": 128, "model_name": 128, "pipeline_name": 128}


class WebhookModel(BaseModel):
    # Alertmanager may add fields in later versions; what we need is validated, the rest kept in the payload.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class WebhookAlert(WebhookModel):
    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: Timestamp = Field(alias="startsAt")
    ends_at: AwareDatetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = Field(min_length=1, max_length=64)

    @field_validator("labels")
    @classmethod
    def _named(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("an alert needs an alertname label")
        for name, longest in LABEL_LENGTHS.items():
            if len(labels.get(name, "")) > longest:
                raise ValueError(f"label {name} is longer than {longest} characters")
        return labels

    @field_validator("starts_at")
    @classmethod
    def _to_the_millisecond(cls, starts_at: datetime) -> datetime:
        """Alertmanager's API shows times to the millisecond, while its webhook carries nanoseconds:
        keyed to the millisecond, an alert re-posted from what the API showed is still the same alert."""
        return starts_at.replace(microsecond=starts_at.microsecond // 1000 * 1000)

    @field_validator("ends_at")
    @classmethod
    def _unset_end(cls, ends_at: datetime | None) -> datetime | None:
        if ends_at is None or ends_at.year == _UNSET_YEAR:
            return None
        return utc_in_range(ends_at)


class WebhookEnvelope(WebhookModel):
    """Alertmanager's webhook body (version 4) but its alerts; Grafana's (version 1) adds fields."""

    version: Literal["4", "1"]
    group_key: str = Field(alias="groupKey", min_length=1)
    truncated_alerts: int = Field(default=0, alias="truncatedAlerts", ge=0)
    status: AlertStatus
    receiver: str = Field(max_length=256)
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")


class WebhookNotification(WebhookEnvelope):
    alerts: list[WebhookAlert] = Field(min_length=1)

    def digest(self) -> str:
        """The same for every delivery of the same news, whatever order the alerts come in."""
        states = sorted(
            (a.fingerprint, a.starts_at.isoformat(), a.status, a.ends_at.isoformat() if a.ends_at else "")
            for a in self.alerts
        )
        return hashlib.sha256(json.dumps([self.group_key, states]).encode()).hexdigest()


@dataclass(frozen=True)
class RejectedAlert:
    """A malformed alert of a notification, kept aside: where it was, which field, and why."""

    index: int
    field: str | None
    reason: str
    alert: str  # the alert as ASCII-escaped JSON, cut to REJECTED_ALERT_CHARS

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


REJECTED_ALERT_CHARS = 4000


class NotificationRefused(Exception):
    """Nothing in the body is usable: `field` names the problem; `rejected` lists the alerts."""

    def __init__(self, message: str, field: str | None, rejected: Sequence[RejectedAlert] = ()) -> None:
        super().__init__(message)
        self.message, self.field, self.rejected = message, field, list(rejected)

    def as_detail(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "rejected": [r.as_json() for r in self.rejected]}


def parse_notification(payload: Any) -> tuple[WebhookNotification, dict[str, Any], list[RejectedAlert]]:
    """The notification's valid alerts, the payload to store (envelope and valid alerts only), and
    the malformed alerts with their reasons. Refused as a whole only when the envelope is unusable
    or no alert is valid: Alertmanager drops what is refused, so one bad alert must not cost the rest.
    """
    if not isinstance(payload, dict):
        raise NotificationRefused("expected a JSON object (an Alertmanager or Grafana webhook body)", None)
    raw_alerts = payload.get("alerts")
    if not isinstance(raw_alerts, list) or not raw_alerts:
        raise NotificationRefused("expected a non-empty list of alerts", "alerts")
    envelope = {key: value for key, value in payload.items() if key != "alerts" and _storable(key, value)}
    accepted, kept, rejected = [], [], []
    for index, raw in enumerate(raw_alerts):
        try:
            check_value(raw, f"alerts[{index}]")
            accepted.append(WebhookAlert.model_validate(raw))
            kept.append(raw)
        except BodyError as exc:
            rejected.append(_rejected(index, exc.field, exc.message, raw))
        except ValidationError as exc:
            rejected.append(_rejected(index, *_first_problem(exc, f"alerts[{index}]"), raw))
    try:
        check_value({key: payload[key] for key in _ENVELOPE_KEYS if key in payload})
        WebhookEnvelope.model_validate(envelope)
    except BodyError as exc:
        raise NotificationRefused(exc.message, exc.field, rejected) from exc
    except ValidationError as exc:
        field, reason = _first_problem(exc)
        raise NotificationRefused(reason, field, rejected) from exc
    if not accepted:
        first = rejected[0]
        raise NotificationRefused(f"no alert is valid; the first: {first.reason}", first.field, rejected)
    notification = WebhookNotification.model_validate({**envelope, "alerts": accepted})
    return notification, {**envelope, "alerts": kept}, rejected


_ENVELOPE_KEYS = tuple(field.alias or name for name, field in WebhookEnvelope.model_fields.items())


def _first_problem(exc: ValidationError, *prefix: str) -> tuple[str | None, str]:
    """The first error's field path (under `prefix`) and message, without the input it refused."""
    first = exc.errors(include_url=False, include_input=False)[0]
    return ".".join(str(part) for part in (*prefix, *first["loc"])) or None, first["msg"]


def _storable(key: str, value: Any) -> bool:
    """Whether an envelope field can be stored; an unknown one that cannot is dropped, not refused."""
    if key in _ENVELOPE_KEYS:
        return True
    try:
        check_value({key: value})
    except BodyError:
        return False
    return True


def _rejected(index: int, field: str | None, reason: str, raw: Any) -> RejectedAlert:
    try:
        text = json.dumps(raw, ensure_ascii=True, default=str)
    except ValueError:
        text = repr(raw)
    return RejectedAlert(index, field, reason, text[:REJECTED_ALERT_CHARS])


@dataclass(frozen=True)
class StoredNotification:
    notification_id: int | None
    new_alerts: int
    resolved_alerts: int
    duplicate: bool
    run_key: str | None
    rejected: tuple[RejectedAlert, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id,
            "new_alerts": self.new_alerts,
            "resolved_alerts": self.resolved_alerts,
            "duplicate": self.duplicate,
            "run_pending": self.run_key is not None,
            "rejected": [r.as_json() for r in self.rejected],
        }


def _write(
    session: Session,
    notification: WebhookNotification,
    payload: dict[str, Any],
    rejected: tuple[RejectedAlert, ...],
    traceparent: str | None,
) -> StoredNotification:
    digest = notification.digest()
    if session.scalar(select(AlertNotification.id).where(AlertNotification.digest == digest)) is not None:
        return StoredNotification(None, 0, 0, duplicate=True, run_key=None, rejected=rejected)
    row = AlertNotification(
        digest=digest,
        receiver=notification.receiver,
        status=notification.status,
        group_key=notification.group_key,
        payload=payload,
        rejected=[{**r.as_json(), "alert": r.alert} for r in rejected] or None,
    )
    session.add(row)
    session.flush()
    keys = {(a.fingerprint, a.starts_at) for a in notification.alerts}
    existing = {
        (alert.fingerprint, alert.starts_at): alert
        for alert in session.scalars(
            select(Alert).where(tuple_(Alert.fingerprint, Alert.starts_at).in_(list(keys)))
        )
    }
    new, resolved, now = 0, 0, utcnow()
    for incoming in notification.alerts:
        key = (incoming.fingerprint, incoming.starts_at)
        stored = existing.get(key)
        if stored is None:
            stored = existing[key] = Alert(
                fingerprint=incoming.fingerprint,
                starts_at=incoming.starts_at,
                ends_at=incoming.ends_at,
                status=incoming.status,
                alertname=incoming.labels["alertname"],
                severity=incoming.labels.get("severity"),
                service=incoming.labels.get("service"),
                model_name=incoming.labels.get("model_name"),
                pipeline_name=incoming.labels.get("pipeline_name"),
                labels=incoming.labels,
                annotations=incoming.annotations,
                generator_url=incoming.generator_url,
                first_notification_id=row.id,
                received_at=now,
                resolved_at=now if incoming.status == AlertStatus.RESOLVED else None,
            )
            session.add(stored)
            new += incoming.status == AlertStatus.FIRING
        elif stored.status == AlertStatus.FIRING and incoming.status == AlertStatus.RESOLVED:
            stored.status, stored.ends_at, stored.resolved_at = AlertStatus.RESOLVED, incoming.ends_at, now
            resolved += 1
    run_key = None
    if new or resolved:
        row.brought_news = True
        run_key = f"handle-alerts-{digest[:40]}"
        session.add(
            FlowRunOutbox(
                idempotency_key=run_key,
                deployment=HANDLE_ALERTS,
                parameters={"notification_id": row.id},
                notification_id=row.id,
                traceparent=traceparent,
            )
        )
    return StoredNotification(row.id, new, resolved, duplicate=False, run_key=run_key, rejected=rejected)


def store_notification(
    store: Store,
    notification: WebhookNotification,
    payload: dict[str, Any],
    rejected: Sequence[RejectedAlert] = (),
    traceparent: str | None = None,
) -> StoredNotification:
    """Persist the notification and its alerts before anyone answers Alertmanager; the malformed
    alerts it carried are kept with it, with their reasons. The run it owes continues the trace
    `traceparent` names (the webhook's)."""
    return store.write_idempotently(
        lambda session: _write(session, notification, payload, tuple(rejected), traceparent)
    )
