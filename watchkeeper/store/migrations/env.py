"""Alembic environment: migrations run on the connection the Store hands over."""

from alembic import context

import watchkeeper.store.remediation  # noqa: F401 - registers its table with the metadata
from watchkeeper.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
