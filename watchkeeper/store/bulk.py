"""Many rows in one INSERT, at a cost per row the intake can pay at thousands of records a second.

On PostgreSQL, SQLAlchemy's multi-row INSERT (`insertmanyvalues`) writes one placeholder per value,
and psycopg parses that text anew whenever the row count changes: 40 to 65 µs of CPU a row,
most of it a regular expression. Here each column goes as one array and the statement reads
`INSERT … SELECT * FROM unnest(…)`: its text depends on the columns only, so psycopg parses it
once and PostgreSQL prepares it. The arrays go in binary (`%b`): in text, psycopg quotes and
escapes every element with a regular expression. A row of keys costs about 5 µs, of aggregates
3 µs, in batches of 1,000 (text arrays: 9.5 and 7.6).

On SQLite, SQLAlchemy builds each row's parameters in Python (about a tenth of the service's busy time at
5,000 predictions a second); here each column's values are converted in one pass and the rows go
to the driver as tuples: `executemany` without `unique`, else multi-row VALUES with RETURNING, as
many rows a statement as SQLite's parameter limit allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import ARRAY, Boolean, ColumnElement, Table, TableClause, any_, bindparam
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from watchkeeper.store import insert_for

_POSTGRESQL = postgresql.dialect()
SQLITE_PARAMETERS = 32_766  # SQLite's bound on a statement's parameters (3.32 and later)


@dataclass(frozen=True)
class ConvertedRows:
    """Rows of one table with each column's values converted for one dialect (`convert_rows`):
    worked out before a transaction, so that while it holds the write turn it only inserts them."""

    dialect: str
    columns: tuple[str, ...]
    values: list[list[Any]]  # a list per column

    def __len__(self) -> int:
        return len(self.values[0]) if self.values else 0


def convert_rows(dialect: Dialect, table: Table, rows: Sequence[Mapping[str, Any]]) -> ConvertedRows:
    """`rows` (each with the same columns) as `insert_rows` would convert them."""
    columns = tuple(rows[0]) if rows else ()
    values = [_column_values(table, name, rows, dialect) for name in columns]
    return ConvertedRows(dialect.name, columns, values)


def insert_rows(
    session: Session,
    table: Table | TableClause,
    rows: Sequence[Mapping[str, Any]] | ConvertedRows,
    unique: Sequence[str] = (),
) -> set[tuple[Any, ...]]:
    """Insert `rows` (each with the same columns, or converted already) in one statement. With
    `unique`, the columns of a unique constraint, a row whose key is stored already is skipped (ON
    CONFLICT DO NOTHING: no lookup before, no race with a concurrent writer), and the keys inserted
    are returned."""
    if not rows:
        return set()
    dialect = session.get_bind().dialect
    if not isinstance(table, Table):  # a migration's own view of a table
        assert not isinstance(rows, ConvertedRows)
        if not unique:
            session.execute(table.insert(), rows)
            return set()
        statement = insert_for(session)(table).on_conflict_do_nothing(index_elements=list(unique))
        result = session.execute(statement.returning(*(table.c[k] for k in unique)), rows)
        return {tuple(row) for row in result}
    if not isinstance(rows, ConvertedRows):
        rows = convert_rows(dialect, table, rows)
    assert rows.dialect == dialect.name, "rows converted for another back end"
    columns = rows.columns
    if dialect.name == "postgresql":
        statement = _unnest_insert(table, columns, tuple(unique))
        return set(driver_rows(session, statement, {f"c{i}": v for i, v in enumerate(rows.values)}))
    records = list(zip(*rows.values, strict=True))
    connection = session.connection()
    if not unique:
        connection.exec_driver_sql(_values_insert(table, columns, (), 1), records)
        return set()
    inserted: set[tuple[Any, ...]] = set()
    per_statement = SQLITE_PARAMETERS // len(columns)
    for start in range(0, len(records), per_statement):
        chunk = records[start : start + per_statement]
        statement = _values_insert(table, columns, tuple(unique), len(chunk))
        flat = tuple(value for record in chunk for value in record)
        inserted.update(driver_rows(session, statement, flat))
    return inserted


def driver_keys(session: Session, keys: Sequence[Any]) -> tuple[str, str, list[Any]]:
    """For a statement of the driver's own (`driver_rows`) that matches a binary key column
    (`KeyBytes`) against `keys`: the match (`IN (?, ...)` on SQLite, `= ANY(%b)` on PostgreSQL,
    the array sent in binary), the placeholder of one more parameter, and the match's parameters."""
    if session.get_bind().dialect.name == "postgresql":
        return "= ANY(CAST(%b AS BYTEA[]))", "%s", [list(keys)]
    return f"IN ({', '.join('?' * len(keys))})", "?", list(keys)


def driver_rows(session: Session, statement: str, parameters: Any) -> list[tuple[Any, ...]]:
    """The statement's rows (none without RETURNING) as the driver's tuples, in the session's
    transaction: a key insert returns a row per new key, and SQLAlchemy's row objects cost more than
    the insert's own Python."""
    connection = session.connection()
    driver_error = connection.dialect.loaded_dbapi.Error
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(statement, parameters)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
    except driver_error as exc:  # as SQLAlchemy raises it: IntegrityError, OperationalError, ...
        raise DBAPIError.instance(statement, parameters, exc, driver_error, hide_parameters=True) from exc
    finally:
        cursor.close()


def _column_values(table: Table, name: str, rows: Sequence[Mapping[str, Any]], dialect: Dialect) -> list[Any]:
    values = [row[name] for row in rows]
    process = table.c[name].type._cached_bind_processor(dialect)
    if not process:
        return values
    # A batch's times are mostly its buckets and its arrival, and a flag has two values: each
    # distinct value is converted once (not a JSON column's, where 1 and True are equal keys).
    if isinstance(values[0], datetime) or isinstance(table.c[name].type, Boolean):
        converted = {value: process(value) for value in set(values)}
        return [converted[value] for value in values]
    return [process(value) for value in values]


@cache
def _unnest_insert(table: Table, columns: tuple[str, ...], unique: tuple[str, ...]) -> str:
    """psycopg's own placeholders: `%(c0)b` sends parameter `c0` in binary."""
    arrays = ", ".join(
        f"CAST(%(c{i})b AS {table.c[name].type.compile(dialect=_POSTGRESQL)}[])"
        for i, name in enumerate(columns)
    )
    statement = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"
    if unique:
        keys = ", ".join(unique)
        statement += f" ON CONFLICT ({keys}) DO NOTHING RETURNING {keys}"
    return statement


def _values_insert(table: Table, columns: tuple[str, ...], unique: tuple[str, ...], count: int) -> str:
    """SQLite's INSERT of `count` rows (qmark placeholders); with `unique`, ON CONFLICT DO NOTHING
    RETURNING those columns. Not cached: the text is cheap next to its rows, and the driver
    keeps the statements it prepared."""
    row = f"({', '.join('?' * len(columns))})"
    statement = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {', '.join([row] * count)}"
    if unique:
        keys = ", ".join(unique)
        statement += f" ON CONFLICT ({keys}) DO NOTHING RETURNING {keys}"
    return statement


def one_of(session: Session, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `column = ANY(array)`, one statement text whatever the
    number of values, where an IN list is a new text (parsed by psycopg again) for each count."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)
