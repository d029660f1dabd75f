"""model_tallies, prediction_keys, waiting_labels and prediction_samples: aggregates kept as
records arrive, and a bounded sample per bucket

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_tallies",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("bucket_start", sa.DateTime(), nullable=False),
        sa.Column("measure", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=300), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("folded", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_model_tallies_window", "model_tallies", ["model_name", "bucket_start"])
    op.create_index(
        "ix_model_tallies_version", "model_tallies", ["model_name", "model_version", "bucket_start"]
    )
    op.create_index(
        "uq_model_tallies_folded",
        "model_tallies",
        ["model_name", "model_version", "bucket_start", "measure", "detail"],
        unique=True,
        sqlite_where=sa.text("folded"),
        postgresql_where=sa.text("folded"),
    )
    op.create_table(
        "prediction_keys",
        sa.Column("model_name", sa.String(length=128), primary_key=True),
        sa.Column("request_id", sa.String(length=256), primary_key=True),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), nullable=False),
        sa.Column("predicted", sa.String(length=64), nullable=True),
        sa.Column("score_bin", sa.String(length=32), nullable=True),
        sa.Column("segments", sa.String(length=400), nullable=True),
        sa.Column("labelled", sa.Boolean(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_prediction_keys_received", "prediction_keys", ["received_at"])
    op.create_table(
        "prediction_samples",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("bucket_start", sa.DateTime(), nullable=False),
        sa.Column("priority", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("error", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("model_name", "request_id", name="uq_prediction_samples_request"),
    )
    op.create_index(
        "ix_prediction_samples_bucket", "prediction_samples", ["model_name", "bucket_start", "priority"]
    )
    op.create_table(
        "waiting_labels",
        sa.Column("model_name", sa.String(length=128), primary_key=True),
        sa.Column("request_id", sa.String(length=256), primary_key=True),
        sa.Column("label", sa.JSON(), nullable=True),
        sa.Column("business_value", sa.Float(), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_waiting_labels_received", "waiting_labels", ["received_at"])

    # A store with history: the last day's raw rows become keys and aggregates, so windows read no
    # gap after the upgrade and labels still to come find their predictions.
    from sqlalchemy.orm import Session

    from watchkeeper.store.intake import aggregate_stored
    from watchkeeper.store.schema import EpochSeconds, UTCDateTime
    from watchkeeper.times import utcnow

    # The tallies as this revision has them (appended rows unfolded; 0010 moves them to their table).
    tallies = sa.table(
        "model_tallies",
        *(sa.column(name) for name in ("model_name", "model_version", "measure", "detail", "total")),
        sa.column("bucket_start", UTCDateTime()),
        sa.Column("folded", sa.Boolean(), default=False),
    )
    # The keys as this revision has them (by model and request id; 0011 hashes them).
    keys = sa.Table(
        "prediction_keys",
        sa.MetaData(),
        sa.Column("model_name", sa.String(length=128), primary_key=True),
        sa.Column("request_id", sa.String(length=256), primary_key=True),
        *(sa.Column(name, sa.String()) for name in ("model_version", "predicted", "score_bin", "segments")),
        sa.Column("bucket_start", EpochSeconds()),
        sa.Column("labelled", sa.Boolean()),
        sa.Column("received_at", EpochSeconds()),
    )
    session = Session(bind=op.get_bind())
    aggregate_stored(session, utcnow() - timedelta(days=1), appends=tallies, key_table=keys)


def downgrade() -> None:
    op.drop_table("waiting_labels")
    op.drop_table("prediction_samples")
    op.drop_table("prediction_keys")
    op.drop_table("model_tallies")
