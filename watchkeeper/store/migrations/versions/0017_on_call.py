"""What the people on call did to an incident: acknowledged (when, by whom), assigned, snoozed,
muted (by whom, with which silences), resolved by hand; when its escalation was claimed; and the
incident a re-firing alert opens after a manual resolve follows

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import watchkeeper.store.schema

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

When = watchkeeper.store.schema.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("acknowledged_at", When(), nullable=True))
        batch.add_column(sa.Column("acknowledged_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("assignee", sa.String(128), nullable=True))
        batch.add_column(sa.Column("snoozed_until", When(), nullable=True))
        batch.add_column(sa.Column("escalated_at", When(), nullable=True))
        batch.add_column(sa.Column("muted_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("silences", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("mute_lease_until", When(), nullable=True))
        batch.add_column(sa.Column("resolved_by", sa.String(128), nullable=True))
        batch.add_column(
            sa.Column(
                "follows_incident_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch.create_foreign_key(
            "fk_incidents_follows_incident_id_incidents", "incidents", ["follows_incident_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_constraint("fk_incidents_follows_incident_id_incidents", type_="foreignkey")
        for column in (
            "follows_incident_id",
            "resolved_by",
            "mute_lease_until",
            "silences",
            "muted_by",
            "escalated_at",
            "snoozed_until",
            "assignee",
            "acknowledged_by",
            "acknowledged_at",
        ):
            batch.drop_column(column)
