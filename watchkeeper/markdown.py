"""Markdown for Prefect artifacts and reports: one table builder, which escapes what would break a
table (a `|` in a value, a line break)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def cell(value: Any) -> str:
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table: the header row, its rule, then one row per item, each value escaped."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
