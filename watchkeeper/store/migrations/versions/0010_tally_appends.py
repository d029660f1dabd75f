"""model_tally_appends: the intake appends where no index is kept up; model_tallies holds the
folded series only. On PostgreSQL, prediction_keys leaves room in its pages for labels' updates

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SERIES = ["model_name", "model_version", "bucket_start", "measure", "detail"]
COLUMNS = ", ".join([*SERIES, "total"])


def upgrade() -> None:
    op.create_table(
        "model_tally_appends",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("bucket_start", sa.DateTime(), nullable=False),
        sa.Column("measure", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=300), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
    )
    op.execute(
        f"INSERT INTO model_tally_appends ({COLUMNS}) SELECT {COLUMNS} FROM model_tallies WHERE NOT folded"
    )
    op.execute("DELETE FROM model_tallies WHERE NOT folded")
    op.drop_index("uq_model_tallies_folded", "model_tallies")
    op.drop_index("ix_model_tallies_version", "model_tallies")
    with op.batch_alter_table("model_tallies") as batch:
        batch.drop_column("folded")
    op.create_index("uq_model_tallies_series", "model_tallies", SERIES, unique=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE prediction_keys SET (fillfactor = 85)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE prediction_keys RESET (fillfactor)")
    op.drop_index("uq_model_tallies_series", "model_tallies")
    with op.batch_alter_table("model_tallies") as batch:
        batch.add_column(sa.Column("folded", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_index(
        "ix_model_tallies_version", "model_tallies", ["model_name", "model_version", "bucket_start"]
    )
    op.create_index(
        "uq_model_tallies_folded",
        "model_tallies",
        SERIES,
        unique=True,
        sqlite_where=sa.text("folded"),
        postgresql_where=sa.text("folded"),
    )
    op.execute(
        f"INSERT INTO model_tallies ({COLUMNS}, folded) SELECT {COLUMNS}, false FROM model_tally_appends"
    )
    op.drop_table("model_tally_appends")
