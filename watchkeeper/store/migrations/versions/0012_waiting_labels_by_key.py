"""waiting_labels indexed by their prediction's key: a batch's waiting labels are taken in one
statement whatever the number of models in it

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_waiting_labels_key", "waiting_labels", ["key"])


def downgrade() -> None:
    op.drop_index("ix_waiting_labels_key", "waiting_labels")
