"""latest windows: the most recent window's results per series, so /metrics reads no history

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    latest = op.create_table(
        "latest_windows",
        sa.Column("kind", sa.String(length=32), primary_key=True),
        sa.Column("subject", sa.String(length=128), primary_key=True),
        sa.Column("model_version", sa.String(length=64), primary_key=True),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("window_end", sa.DateTime(), nullable=False),
        sa.Column("computed_at", sa.DateTime(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
    )
    results = sa.table(
        "evaluation_results",
        sa.column("kind", sa.String),
        sa.column("subject", sa.String),
        sa.column("model_version", sa.String),
        sa.column("window_start", sa.DateTime),
        sa.column("window_end", sa.DateTime),
        sa.column("computed_at", sa.DateTime),
        sa.column("metric", sa.String),
        sa.column("labels", sa.JSON),
        sa.column("value", sa.Float),
    )
    c = results.c
    bind = op.get_bind()
    newest = bind.execute(
        sa.select(c.kind, c.subject, c.model_version, sa.func.max(c.window_end)).group_by(
            c.kind, c.subject, c.model_version
        )
    ).all()
    rows = []
    for kind, subject, version, end in newest:
        window = bind.execute(
            sa.select(c.window_start, c.computed_at, c.metric, c.labels, c.value).where(
                c.kind == kind, c.subject == subject, c.model_version == version, c.window_end >= end
            )
        ).all()
        rows.append(
            {
                "kind": kind,
                "subject": subject,
                "model_version": version,
                "window_start": window[0].window_start,
                "window_end": end,
                "computed_at": max(r.computed_at for r in window),
                "results": [{"metric": r.metric, "labels": r.labels or {}, "value": r.value} for r in window],
            }
        )
    if rows:
        op.bulk_insert(latest, rows)


def downgrade() -> None:
    op.drop_table("latest_windows")
