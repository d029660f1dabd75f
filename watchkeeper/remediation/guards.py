"""The guards' facts, read from the store at decision time: the kill switch, each action and
target's last run (cooldowns) and the runs of the last hour (the hourly budget), so that the guards
hold across restarts and replicas. `remediation.playbooks` applies them."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from watchkeeper.config import WatchkeeperConfig
from watchkeeper.remediation.playbooks import COMMUNICATION, Guards
from watchkeeper.store.actions import remediation_on
from watchkeeper.store.remediation import RESERVING, REVERT_SUFFIX, Decision, RemediationAction


def load_guards(session: Session, config: WatchkeeperConfig, now: datetime) -> Guards:
    longest = max((p.cooldown for p in config.remediation.playbooks), default=timedelta(0))
    reserving = (
        RemediationAction.decision.in_([Decision.RUN, Decision.NEEDS_APPROVAL])
        & (RemediationAction.status.in_(list(RESERVING)))
        & ~RemediationAction.idempotency_key.endswith(REVERT_SUFFIX)
    )
    last_run = {
        (action, target): at
        for action, target, at in session.execute(
            select(RemediationAction.action, RemediationAction.target, func.max(RemediationAction.decided_at))
            .where(reserving, RemediationAction.decided_at >= now - longest)
            .group_by(RemediationAction.action, RemediationAction.target)
        )
    }
    runs = session.scalar(
        select(func.count())
        .select_from(RemediationAction)
        .where(
            reserving,
            RemediationAction.decided_at >= now - timedelta(hours=1),
            RemediationAction.action.not_in(list(COMMUNICATION)),
        )
    )
    return Guards(
        remediation_on(session),
        last_run,
        runs or 0,
        config.remediation.max_actions_per_hour,
        tuple(config.remediation.maintenance_windows),
    )
