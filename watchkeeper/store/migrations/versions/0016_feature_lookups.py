"""Feature-store lookups: each view's serving latency, failed keys and newest materialisation

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import watchkeeper.store.schema

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feature_lookups",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("feature_store", sa.String(length=128), nullable=False),
        sa.Column("feature_view", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("timestamp", watchkeeper.store.schema.UTCDateTime(), nullable=False),
        sa.Column("latency_seconds", sa.Float(), nullable=False),
        sa.Column("keys", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("materialized_at", watchkeeper.store.schema.UTCDateTime(), nullable=True),
        sa.Column("received_at", watchkeeper.store.schema.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("feature_store", "feature_view", "request_id", name="uq_feature_lookup"),
    )
    op.create_index(
        "ix_feature_lookups_time", "feature_lookups", ["feature_store", "feature_view", "timestamp"]
    )


def downgrade() -> None:
    op.drop_index("ix_feature_lookups_time", table_name="feature_lookups")
    op.drop_table("feature_lookups")
