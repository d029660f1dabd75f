"""prediction_keys keyed by a hash of model and request id (16 bytes; about 40 less a key, in
the row and in the index by arrival); waiting_labels carry the hash of their prediction's key

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FACTS = ["model_version", "bucket_start", "predicted", "score_bin", "segments", "labelled", "received_at"]
CHUNK = 10_000


def _facts() -> list[sa.Column]:
    return [
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), nullable=False),
        sa.Column("predicted", sa.String(length=64), nullable=True),
        sa.Column("score_bin", sa.String(length=32), nullable=True),
        sa.Column("segments", sa.String(length=400), nullable=True),
        sa.Column("labelled", sa.Boolean(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
    ]


def _keys_table(*key: sa.Column) -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "prediction_keys",
        *key,
        *_facts(),
        sqlite_with_rowid=False,
        postgresql_with={"fillfactor": 85} if postgresql else {},
    )
    op.create_index("ix_prediction_keys_received", "prediction_keys", ["received_at"])


def _by_request(table: sa.TableClause) -> Iterator[list[sa.Row[Any]]]:
    """The table's rows in chunks, in (model_name, request_id) order."""
    after: tuple[str, str] = ("", "")
    order = (table.c.model_name, table.c.request_id)
    chunk = sa.select(table).order_by(*order).limit(CHUNK)
    while rows := op.get_bind().execute(chunk.where(sa.tuple_(*order) > after)).all():
        yield rows
        after = (rows[-1].model_name, rows[-1].request_id)


def upgrade() -> None:
    from watchkeeper.intake.aggregates import request_key

    bind = op.get_bind()
    op.drop_index("ix_prediction_keys_received", "prediction_keys")
    op.rename_table("prediction_keys", "prediction_keys_by_request")
    if bind.dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE prediction_keys_by_request "
            "RENAME CONSTRAINT prediction_keys_pkey TO prediction_keys_by_request_pkey"
        )
    _keys_table(sa.Column("key", sa.LargeBinary(length=28), primary_key=True))
    old = sa.table(
        "prediction_keys_by_request", *(sa.column(c) for c in ["model_name", "request_id", *FACTS])
    )
    new = sa.table("prediction_keys", *(sa.column(c) for c in ["key", *FACTS]))
    for rows in _by_request(old):
        hashed = [
            {"key": request_key(r.model_name, r.request_id), **{c: r._mapping[c] for c in FACTS}}
            for r in rows
        ]
        bind.execute(new.insert(), hashed)
    op.drop_table("prediction_keys_by_request")

    with op.batch_alter_table("waiting_labels") as batch:
        batch.add_column(sa.Column("key", sa.LargeBinary(length=28), nullable=True))
    waiting = sa.table("waiting_labels", sa.column("model_name"), sa.column("request_id"), sa.column("key"))
    mark = waiting.update().where(
        waiting.c.model_name == sa.bindparam("m"), waiting.c.request_id == sa.bindparam("r")
    )
    for rows in _by_request(waiting):
        keys = [
            {"m": r.model_name, "r": r.request_id, "k": request_key(r.model_name, r.request_id)} for r in rows
        ]
        bind.execute(mark.values(key=sa.bindparam("k")), keys)
    with op.batch_alter_table("waiting_labels") as batch:
        batch.alter_column("key", existing_type=sa.LargeBinary(length=28), nullable=False)


def downgrade() -> None:
    """The keys' request ids are not recoverable from their hashes: the keys go, so a batch re-sent
    within the dedupe window counts again and a label still to come waits for a prediction that
    will not return."""
    with op.batch_alter_table("waiting_labels") as batch:
        batch.drop_column("key")
    op.drop_index("ix_prediction_keys_received", "prediction_keys")
    op.drop_table("prediction_keys")
    _keys_table(
        sa.Column("model_name", sa.String(length=128), primary_key=True),
        sa.Column("request_id", sa.String(length=256), primary_key=True),
    )
