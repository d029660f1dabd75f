"""model_tallies and prediction_samples keyed by what they are read by, without a rowid on SQLite,
their bucket starts in epoch seconds: a folded series kept once (it was kept in the row, a window
index and a unique index), a bucket's sample rows together in priority order (the trim above the
k-th frees whole pages); model_tally_appends' bucket starts in epoch seconds too (folded first)

Revision ID: 0018
Revises: 0017
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SERIES = ["model_name", "bucket_start", "model_version", "measure", "detail"]
SAMPLE = [
    "model_name",
    "model_version",
    "request_id",
    "bucket_start",
    "priority",
    "timestamp",
    "features",
    "prediction",
    "score",
    "error",
    "latency_seconds",
    "trace_id",
]


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _to_epoch(column: str) -> str:
    """SQL of a stored UTC time (naive, as `UTCDateTime` keeps it) in epoch seconds."""
    if _postgresql():
        return f"CAST(EXTRACT(EPOCH FROM {column}) AS BIGINT)"
    return f"CAST(strftime('%s', {column}) AS INTEGER)"


def _from_epoch(column: str) -> str:
    if _postgresql():
        return f"(to_timestamp({column}) AT TIME ZONE 'UTC')"
    # As SQLAlchemy writes a time on SQLite (microseconds included), so that stored times compare
    # as text with the times it binds.
    return f"(strftime('%Y-%m-%d %H:%M:%f', {column}, 'unixepoch') || '000')"


def _select(columns: list[str], converted: str, convert: str) -> str:
    return ", ".join(f"{convert} AS {c}" if c == converted else c for c in columns)


def _series_columns(bucket: sa.types.TypeEngine) -> list[sa.Column]:
    return [
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("bucket_start", bucket, nullable=False),
        sa.Column("measure", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=300), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
    ]


def _sample_columns(bucket: sa.types.TypeEngine) -> list[sa.Column]:
    return [
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("bucket_start", bucket, nullable=False),
        sa.Column("priority", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("error", sa.Boolean(), nullable=False),
        sa.Column("latency_seconds", sa.Float(), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
    ]


def _set_aside(table: str, indexes: Sequence[str]) -> str:
    """Rename the table out of the way (its indexes dropped, PostgreSQL's primary key renamed so the
    new table can take the name); returns its new name."""
    for index in indexes:
        op.drop_index(index, table)
    old = f"{table}_old"
    op.rename_table(table, old)
    if _postgresql():
        op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {table}_pkey TO {old}_pkey")
    return old


def _appends(bucket: sa.types.TypeEngine) -> None:
    op.drop_table("model_tally_appends")
    op.create_table("model_tally_appends", sa.Column("id", BigId, primary_key=True), *_series_columns(bucket))


def upgrade() -> None:
    series, all_series = ", ".join(SERIES), ", ".join([*SERIES, "total"])
    old = _set_aside("model_tallies", ["ix_model_tallies_window", "uq_model_tallies_series"])
    op.create_table(
        "model_tallies",
        *_series_columns(sa.BigInteger()),
        sa.PrimaryKeyConstraint(*SERIES),
        sqlite_with_rowid=False,
    )
    epoch = _select(SERIES, "bucket_start", _to_epoch("bucket_start"))
    op.execute(
        f"INSERT INTO model_tallies ({all_series}) SELECT {series}, sum(total) FROM ("
        f"SELECT {epoch}, total FROM {old} UNION ALL SELECT {epoch}, total FROM model_tally_appends"
        f") AS folded GROUP BY {series}"
    )
    op.drop_table(old)
    _appends(sa.BigInteger())

    old = _set_aside("prediction_samples", ["ix_prediction_samples_bucket"])
    op.create_table(
        "prediction_samples",
        *_sample_columns(sa.BigInteger()),
        sa.PrimaryKeyConstraint("model_name", "bucket_start", "priority"),
        sqlite_with_rowid=False,
    )
    columns = ", ".join(SAMPLE)
    op.execute(
        f"INSERT INTO prediction_samples ({columns}) "
        f"SELECT {_select(SAMPLE, 'bucket_start', _to_epoch('bucket_start'))} FROM {old} WHERE true "
        "ON CONFLICT DO NOTHING"
    )
    op.drop_table(old)


def downgrade() -> None:
    series, all_series = ", ".join(SERIES), ", ".join([*SERIES, "total"])
    old = _set_aside("model_tallies", [])
    op.create_table(
        "model_tallies", sa.Column("id", BigId, primary_key=True), *_series_columns(sa.DateTime())
    )
    from_epoch = _select(SERIES, "bucket_start", _from_epoch("bucket_start"))
    op.execute(
        f"INSERT INTO model_tallies ({all_series}) SELECT {series}, sum(total) FROM ("
        f"SELECT {from_epoch}, total FROM {old} UNION ALL SELECT {from_epoch}, total FROM model_tally_appends"
        f") AS folded GROUP BY {series}"
    )
    op.drop_table(old)
    op.create_index("ix_model_tallies_window", "model_tallies", ["model_name", "bucket_start"])
    op.create_index(
        "uq_model_tallies_series",
        "model_tallies",
        ["model_name", "model_version", "bucket_start", "measure", "detail"],
        unique=True,
    )
    _appends(sa.DateTime())

    old = _set_aside("prediction_samples", [])
    op.create_table(
        "prediction_samples",
        sa.Column("id", BigId, primary_key=True),
        *_sample_columns(sa.DateTime()),
        sa.UniqueConstraint("model_name", "request_id", name="uq_prediction_samples_request"),
    )
    columns = ", ".join(SAMPLE)
    op.execute(
        f"INSERT INTO prediction_samples ({columns}) "
        f"SELECT {_select(SAMPLE, 'bucket_start', _from_epoch('bucket_start'))} FROM {old} WHERE true "
        "ON CONFLICT DO NOTHING"
    )
    op.drop_table(old)
    op.create_index(
        "ix_prediction_samples_bucket", "prediction_samples", ["model_name", "bucket_start", "priority"]
    )
