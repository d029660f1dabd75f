"""The automation report's markdown (the `automation-report` Prefect artifact)."""

from __future__ import annotations

from typing import Any

from watchkeeper.markdown import table


def report_markdown(report: dict[str, Any]) -> str:
    """The automation report as the markdown of the `automation-report` Prefect artifact."""
    rate = "-" if report["success_rate"] is None else f"{report['success_rate']:.0%}"
    kinds = sorted({kind for counts in report["by_action"].values() for kind in counts})
    lines = [
        f"# Automation, last {report['hours']} h",
        "",
        f"{report['decisions']} decisions, {report['executed']} executed, {report['succeeded']} succeeded "
        f"(success rate {rate}).",
        "",
        table(
            ["action", *kinds],
            ([action, *(counts.get(k, 0) for k in kinds)] for action, counts in report["by_action"].items()),
        ),
        "",
        table(
            ["when", "incident", "action", "target", "decision", "status", "reason"],
            (
                [
                    a[k]
                    for k in ("decided_at", "incident_id", "action", "target", "decision", "status", "reason")
                ]
                for a in report["recent"]
            ),
        ),
    ]
    return "\n".join(lines)
