"""Keyset paging for the list endpoints: `?cursor=` continues where the previous page ended.

A cursor is the last row's sort key, opaque to clients (URL-safe base64 of JSON). Unlike an
offset, it stays right while rows are added at the top, and it costs an index seek, not a scan of
everything before the page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, and_, or_

from watchkeeper.intake.bodies import MAX_INT, MIN_INT, utc_in_range

T = TypeVar("T")


class CursorError(ValueError):
    """The cursor is not one this service issued (or it was cut)."""


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode(key: Sequence[Any]) -> str:
    values = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode(cursor: str, kinds: Sequence[type]) -> list[Any]:
    """The cursor's key, each part converted to its kind (datetime from ISO text, int)."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(kinds):
            raise CursorError("not a cursor of this list")
        return [_part(value, kind) for value, kind in zip(raw, kinds, strict=True)]
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise CursorError("not a cursor this service issued: use the next_cursor of a previous page") from exc


def _part(value: Any, kind: type) -> Any:
    if kind is datetime:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("a cursor's time has a zone")
        return utc_in_range(moment)
    number = int(value)
    if not MIN_INT <= number <= MAX_INT:
        raise ValueError("an id beyond 64 bits")
    return number


def before(columns: Sequence[Any], key: Sequence[Any]) -> ColumnElement[bool]:
    """Rows after `key` in descending order of `columns` (the keyset condition, spelled out so that
    every value is bound with its column's type)."""
    first, *rest = columns
    if not rest:
        return first < key[0]
    return or_(first < key[0], and_(first == key[0], before(rest, key[1:])))


def page(
    rows: Sequence[Any], limit: int, key: Callable[[Any], Sequence[Any]]
) -> tuple[list[Any], str | None]:
    """The first `limit` of `rows` (fetched as `limit + 1`) and the cursor of the next page, if any."""
    if len(rows) <= limit:
        return list(rows), None
    return list(rows[:limit]), encode(key(rows[limit - 1]))
