"""executors: live warm executors' heartbeats and the flow runs each has claimed

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "executors",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "executor_claims",
        sa.Column("flow_run_id", sa.String(length=36), primary_key=True),
        sa.Column("executor_id", sa.String(length=64), nullable=False),
        sa.Column("deployment", sa.String(length=256), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_executor_claims_executor", "executor_claims", ["executor_id"])


def downgrade() -> None:
    op.drop_index("ix_executor_claims_executor", table_name="executor_claims")
    op.drop_table("executor_claims")
    op.drop_table("executors")
