"""Model reports and their deliveries: the one module that writes either table.

A report is keyed by (model, period): a retried or repeated run of the same period replaces its
content in one statement and keeps its id, so links already sent stay valid. Each delivery is
claimed before the send (INSERT ... ON CONFLICT DO NOTHING); only the winner sends, so two runs of
one period never send twice. A send that failed may be claimed again (compare-and-set on
`failed`); one whose outcome is unknown (the sender died mid-send) is never sent again.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update

from watchkeeper.store import Store, insert_for, paging
from watchkeeper.store.incidents import iso
from watchkeeper.store.paging import Page
from watchkeeper.store.schema import ModelReport, ReportDelivery
from watchkeeper.times import utcnow


class DeliveryStatus(StrEnum):
    SENDING = "sending"  # claimed; the send's outcome is unknown until it is recorded
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class ReportPeriod:
    model_name: str
    start: datetime
    end: datetime


def finite(value: Any) -> Any:
    """The summary with NaN and infinities as None: PostgreSQL's JSON refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def save_report(
    store: Store,
    period: ReportPeriod,
    summary: dict[str, Any],
    markdown: str,
    html: str,
    flow_run_id: str | None,
) -> int:
    """Store the period's report (replacing an earlier one); returns its id."""
    values = {
        "model_name": period.model_name,
        "period_start": period.start,
        "period_end": period.end,
        "created_at": utcnow(),
        "flow_run_id": flow_run_id,
        "summary": finite(summary),
        "markdown": markdown,
        "html_gzip": gzip.compress(html.encode(), compresslevel=6),
    }
    with store.writing() as session:
        statement = insert_for(session)(ModelReport).values(values)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["model_name", "period_start", "period_end"],
                set_={
                    name: statement.excluded[name]
                    for name in ("created_at", "flow_run_id", "summary", "markdown", "html_gzip")
                },
            )
        )
        return session.scalar(
            select(ModelReport.id).where(
                ModelReport.model_name == period.model_name,
                ModelReport.period_start == period.start,
                ModelReport.period_end == period.end,
            )
        )


def report_json(row: ModelReport) -> dict[str, Any]:
    return {
        "id": row.id,
        "model_name": row.model_name,
        "period_start": iso(row.period_start),
        "period_end": iso(row.period_end),
        "created_at": iso(row.created_at),
        "flow_run_id": row.flow_run_id,
        "summary": row.summary,
    }


def list_reports(
    store: Store, model_name: str | None = None, limit: int = 50, cursor: str | None = None
) -> Page[dict[str, Any]]:
    """Newest period first, without the HTML."""
    order = (ModelReport.period_end, ModelReport.id)
    columns = [c for c in ModelReport.__table__.columns if c.name not in {"html_gzip", "markdown"}]
    query = select(*columns).order_by(*(c.desc() for c in order)).limit(limit + 1)
    if model_name is not None:
        query = query.where(ModelReport.model_name == model_name)
    if cursor is not None:
        query = query.where(paging.before(order, paging.decode(cursor, (datetime, int))))
    with store.reading() as session:
        rows = session.execute(query).all()
    page, next_cursor = paging.page(rows, limit, lambda r: (r.period_end, r.id))
    return Page([report_json(r) for r in page], next_cursor)  # type: ignore[arg-type]


def get_report(store: Store, report_id: int) -> dict[str, Any] | None:
    """The report's figures, without its HTML."""
    with store.reading() as session:
        row = session.get(ModelReport, report_id)
        return report_json(row) if row is not None else None


def report_html(store: Store, report_id: int) -> str | None:
    with store.reading() as session:
        packed = session.scalar(select(ModelReport.html_gzip).where(ModelReport.id == report_id))
    return gzip.decompress(packed).decode() if packed is not None else None


def claim_delivery(store: Store, period: ReportPeriod, target: str, claimant: str) -> bool:
    """True when this caller may send the period's report to `target` (and must record the outcome)."""
    row = {
        "model_name": period.model_name,
        "period_start": period.start,
        "period_end": period.end,
        "target": target,
        "status": DeliveryStatus.SENDING,
        "claimed_by": claimant[:128],
        "claimed_at": utcnow(),
    }
    key = (
        ReportDelivery.model_name == period.model_name,
        ReportDelivery.period_start == period.start,
        ReportDelivery.period_end == period.end,
        ReportDelivery.target == target,
    )
    with store.writing() as session:
        inserted = session.execute(
            insert_for(session)(ReportDelivery)
            .values(row)
            .on_conflict_do_nothing(index_elements=["model_name", "period_start", "period_end", "target"])
            .returning(ReportDelivery.id)
        ).first()
        if inserted is not None:
            return True
        retaken = session.execute(
            update(ReportDelivery)
            .where(*key, ReportDelivery.status == DeliveryStatus.FAILED)
            .values(status=DeliveryStatus.SENDING, claimed_by=row["claimed_by"], claimed_at=row["claimed_at"])
        )
        return retaken.rowcount == 1


def record_delivery(
    store: Store, period: ReportPeriod, target: str, claimant: str, status: DeliveryStatus, detail: str
) -> None:
    """The claimed send's outcome; only the claimant's claim is updated."""
    with store.writing() as session:
        session.execute(
            update(ReportDelivery)
            .where(
                ReportDelivery.model_name == period.model_name,
                ReportDelivery.period_start == period.start,
                ReportDelivery.period_end == period.end,
                ReportDelivery.target == target,
                ReportDelivery.status == DeliveryStatus.SENDING,
                ReportDelivery.claimed_by == claimant[:128],
            )
            .values(status=status, finished_at=utcnow(), detail=detail[:2000])
        )
