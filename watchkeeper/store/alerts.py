"""Alertmanager notifications into the store: every alert kept once, a resolution closes it.

Alertmanager re-sends the whole group on every notification and an Alertmanager cluster delivers
at least once, so an alert is identified by its fingerprint and startsAt, and a notification by a
digest of what it says. A notification that brings something new (a new firing alert, or a
resolution) records one pending `handle-alerts` run in the outbox, in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from watchkeeper.store import Store
from watchkeeper.store.schema import Alert, AlertNotification, FlowRunOutbox, utcnow

HANDLE_ALERTS = "handle-alerts/handle-alerts"
# Alertmanager marks "no end time" with the zero time.
_UNSET_YEAR = 1


class WebhookModel(BaseModel):
    # Alertmanager may add fields in later versions; what we need is validated, the rest kept in the payload.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class WebhookAlert(WebhookModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: AwareDatetime = Field(alias="startsAt")
    ends_at: AwareDatetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = Field(min_length=1, max_length=64)

    @field_validator("labels")
    @classmethod
    def _named(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("an alert needs an alertname label")
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
        return None if ends_at is not None and ends_at.year == _UNSET_YEAR else ends_at


class WebhookNotification(WebhookModel):
    """Alertmanager's webhook body, version 4."""

    version: Literal["4"]
    group_key: str = Field(alias="groupKey", min_length=1)
    truncated_alerts: int = Field(default=0, alias="truncatedAlerts", ge=0)
    status: Literal["firing", "resolved"]
    receiver: str
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[WebhookAlert] = Field(min_length=1)

    def digest(self) -> str:
        """The same for every delivery of the same news, whatever order the alerts come in."""
        states = sorted(
            (a.fingerprint, a.starts_at.isoformat(), a.status, a.ends_at.isoformat() if a.ends_at else "")
            for a in self.alerts
        )
        return hashlib.sha256(json.dumps([self.group_key, states]).encode()).hexdigest()


@dataclass(frozen=True)
class StoredNotification:
    notification_id: int | None
    new_alerts: int
    resolved_alerts: int
    duplicate: bool
    run_key: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id,
            "new_alerts": self.new_alerts,
            "resolved_alerts": self.resolved_alerts,
            "duplicate": self.duplicate,
            "run_pending": self.run_key is not None,
        }


def _write(
    session: Session, notification: WebhookNotification, payload: dict[str, Any]
) -> StoredNotification:
    digest = notification.digest()
    if session.scalar(select(AlertNotification.id).where(AlertNotification.digest == digest)) is not None:
        return StoredNotification(None, 0, 0, duplicate=True, run_key=None)
    row = AlertNotification(
        digest=digest,
        receiver=notification.receiver,
        status=notification.status,
        group_key=notification.group_key,
        payload=payload,
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
                resolved_at=now if incoming.status == "resolved" else None,
            )
            session.add(stored)
            new += incoming.status == "firing"
        elif stored.status == "firing" and incoming.status == "resolved":
            stored.status, stored.ends_at, stored.resolved_at = "resolved", incoming.ends_at, now
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
            )
        )
    return StoredNotification(row.id, new, resolved, duplicate=False, run_key=run_key)


def store_notification(
    store: Store, notification: WebhookNotification, payload: dict[str, Any]
) -> StoredNotification:
    """Persist the notification and its alerts before anyone answers Alertmanager."""
    return store.write_idempotently(lambda session: _write(session, notification, payload))
