"""An owed run keeps its notification's traceparent (the run continues that trace), an incident
the trace id of the notification whose run opened it, and a sampled prediction its latency and
its request's trace id (an incident's example requests)

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("flow_run_outbox", sa.Column("traceparent", sa.String(55), nullable=True))
    op.add_column("incidents", sa.Column("trace_id", sa.String(32), nullable=True))
    op.add_column("prediction_samples", sa.Column("latency_seconds", sa.Float(), nullable=True))
    op.add_column("prediction_samples", sa.Column("trace_id", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("prediction_samples", "trace_id")
    op.drop_column("prediction_samples", "latency_seconds")
    op.drop_column("incidents", "trace_id")
    op.drop_column("flow_run_outbox", "traceparent")
