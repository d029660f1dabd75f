"""Alert severity, in one order: what each level ranks as (an incident takes its members' highest),
how strongly it ties alerts together in correlation, and what PagerDuty calls it.

"page" is the level an operator chose to be woken for: it ranks above "critical", ties alerts as
strongly as "critical" does, and pages as "critical". A severity outside the table ranks lowest and
weighs as "info"; PagerDuty gets "error" for it, so an unknown label still pages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"
    PAGE = "page"


@dataclass(frozen=True)
class Level:
    rank: int
    strength: float
    pagerduty: str


LEVELS: dict[str, Level] = {
    Severity.INFO: Level(0, 1.0, "info"),
    Severity.WARNING: Level(1, 1.5, "warning"),
    Severity.ERROR: Level(2, 2.0, "error"),
    Severity.CRITICAL: Level(3, 3.0, "critical"),
    Severity.PAGE: Level(4, 3.0, "critical"),
}
UNKNOWN = Level(0, 1.0, "error")


def level(severity: str | None) -> Level:
    return LEVELS.get((severity or "").lower(), UNKNOWN)


def highest(severities: Iterable[str]) -> str | None:
    """The highest-ranked of `severities` (the first of equals), None when there are none."""
    return max(severities, key=lambda s: level(s).rank, default=None)


def pagerduty_severity(severity: str | None) -> str:
    return level(severity).pagerduty
