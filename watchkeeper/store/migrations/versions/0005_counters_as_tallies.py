"""counters as tallies: the intake's record counts and histograms become append-only tally rows

Concurrent intake writers updated the same counter and bucket rows of a model (on PostgreSQL, 8
writers stored fewer records per second than one); as tallies, each batch inserts rows of its own.
The totals carry over: each old row becomes one tally row. The tallies' index goes: every
writer inserted the same few keys into it, so they queued on its leaf pages, and nothing reads
through it (a fold deletes every row, a scrape groups them all).

Revision ID: 0005
Revises: 0004
"""

import math
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TALLIES = sa.table(
    "tallies",
    sa.column("family", sa.String),
    sa.column("subject", sa.String),
    sa.column("variant", sa.String),
    sa.column("detail", sa.String),
    sa.column("total", sa.Float),
)


def _le_text(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def upgrade() -> None:
    bind = op.get_bind()
    rows = [
        {"family": f"count:{kind}", "subject": model, "variant": version, "detail": "", "total": float(total)}
        for kind, model, version, total in bind.execute(
            sa.text("SELECT kind, model_name, model_version, total FROM intake_counts")
        )
    ]
    rows += [
        {"family": f"bucket:{family}", "subject": s, "variant": v, "detail": _le_text(le), "total": float(n)}
        for family, s, v, le, n in bind.execute(
            sa.text("SELECT family, subject, variant, le, total FROM histogram_buckets")
        )
    ]
    for family, s, v, n, total in bind.execute(
        sa.text("SELECT family, subject, variant, total, sum FROM histogram_sums")
    ):
        rows.append(
            {"family": f"sum:{family}", "subject": s, "variant": v, "detail": "count", "total": float(n)}
        )
        rows.append({"family": f"sum:{family}", "subject": s, "variant": v, "detail": "sum", "total": total})
    if rows:
        op.bulk_insert(TALLIES, rows)
    op.drop_table("histogram_sums")
    op.drop_table("histogram_buckets")
    op.drop_table("intake_counts")
    op.drop_index("ix_tallies_series", table_name="tallies")


def downgrade() -> None:
    op.create_index("ix_tallies_series", "tallies", ["family", "subject", "variant", "detail"])
    op.create_table(
        "intake_counts",
        sa.Column("kind", sa.String(length=32), primary_key=True),
        sa.Column("model_name", sa.String(length=128), primary_key=True),
        sa.Column("model_version", sa.String(length=64), primary_key=True),
        sa.Column("total", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "histogram_buckets",
        sa.Column("family", sa.String(length=32), primary_key=True),
        sa.Column("subject", sa.String(length=128), primary_key=True),
        sa.Column("variant", sa.String(length=64), primary_key=True),
        sa.Column("le", sa.Float(), primary_key=True),
        sa.Column("total", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "histogram_sums",
        sa.Column("family", sa.String(length=32), primary_key=True),
        sa.Column("subject", sa.String(length=128), primary_key=True),
        sa.Column("variant", sa.String(length=64), primary_key=True),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
    )
    bind = op.get_bind()
    series = bind.execute(
        sa.text(
            "SELECT family, subject, variant, detail, SUM(total) FROM tallies "
            "WHERE family LIKE 'count:%' OR family LIKE 'bucket:%' OR family LIKE 'sum:%' "
            "GROUP BY family, subject, variant, detail"
        )
    ).all()
    counts, buckets, sums = [], [], {}
    for family, subject, variant, detail, total in series:
        kind, _, name = family.partition(":")
        if kind == "count":
            counts.append(
                {"kind": name, "model_name": subject, "model_version": variant, "total": int(total)}
            )
        elif kind == "bucket":
            le = math.inf if detail == "+Inf" else float(detail)
            buckets.append(
                {"family": name, "subject": subject, "variant": variant, "le": le, "total": int(total)}
            )
        else:
            sums.setdefault((name, subject, variant), {})[detail] = total
    for table, rows in (("intake_counts", counts), ("histogram_buckets", buckets)):
        if rows:
            op.bulk_insert(sa.table(table, *(sa.column(k) for k in rows[0])), rows)
    sum_rows = [
        {"family": f, "subject": s, "variant": v, "total": int(d.get("count", 0)), "sum": d.get("sum", 0.0)}
        for (f, s, v), d in sums.items()
    ]
    if sum_rows:
        op.bulk_insert(sa.table("histogram_sums", *(sa.column(k) for k in sum_rows[0])), sum_rows)
    bind.execute(
        sa.text(
            "DELETE FROM tallies WHERE family LIKE 'count:%' OR family LIKE 'bucket:%' OR family LIKE 'sum:%'"
        )
    )
