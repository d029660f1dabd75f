"""remediation state: statuses sized and checked from their enum, claims, calls, plans; incident revisions

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import watchkeeper.store.schema
from watchkeeper.store.remediation import DECISION_LENGTH, STATUS_LENGTH, ActionStatus, Decision

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _one_of(column: str, values: type) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("remediation_actions", schema=None) as batch_op:
        batch_op.alter_column(
            "status", existing_type=sa.String(length=16), type_=sa.String(length=STATUS_LENGTH)
        )
        batch_op.alter_column(
            "decision", existing_type=sa.String(length=16), type_=sa.String(length=DECISION_LENGTH)
        )
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("claimed_at", watchkeeper.store.schema.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("calls", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("plan", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("settled_by", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("settled_at", watchkeeper.store.schema.UTCDateTime(), nullable=True))
        batch_op.create_check_constraint("ck_remediation_status", _one_of("status", ActionStatus))
        batch_op.create_check_constraint("ck_remediation_decision", _one_of("decision", Decision))
        batch_op.create_index("ix_remediation_status", ["status", "decided_at"], unique=False)
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("handled_revision", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_column("handled_revision")
        batch_op.drop_column("revision")
    with op.batch_alter_table("remediation_actions", schema=None) as batch_op:
        batch_op.drop_index("ix_remediation_status")
        batch_op.drop_constraint("ck_remediation_decision", type_="check")
        batch_op.drop_constraint("ck_remediation_status", type_="check")
        for column in ("settled_at", "settled_by", "plan", "calls", "attempts", "claimed_at", "claimed_by"):
            batch_op.drop_column(column)
        batch_op.alter_column("decision", type_=sa.String(length=16))
        batch_op.alter_column("status", type_=sa.String(length=16))
