"""How well Watchkeeper does: rca-eval on PetShop and the fault drill."""

from __future__ import annotations

import json
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from watchkeeper.anomalies import WARM_UP_SECONDS
from watchkeeper.cli.app import app, console, errors, fail
from watchkeeper.runtime.host import free_port


class RcaDataset(StrEnum):
    petshop = "petshop"


class RcaSplit(StrEnum):
    train = "train"
    test = "test"
    all = "all"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_scores(title: str, rows: dict[str, dict[str, Any]]) -> None:
    table = Table(title, "issues", "top-1", "top-3", "specificity", "noissue windows")
    for name, row in rows.items():
        table.add_row(
            name,
            str(row["n"]),
            _score(row["top1"]),
            _score(row["top3"]),
            _score(row["specificity"]),
            str(row["specificity_windows"]),
        )
    console.print(table)


@app.command("rca-eval")
def rca_eval(
    dataset: Annotated[RcaDataset, typer.Argument(help="Dataset format")],
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The dataset's folder of scenarios")],
    split: Annotated[RcaSplit, typer.Option(help="Issues to score")] = RcaSplit.train,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON")] = False,
    details: Annotated[
        bool, typer.Option("--details", help="Add every issue's ranked candidates and reasons to the JSON")
    ] = False,
) -> None:
    """Score the root-cause ranking on a labelled dataset: top-1 and top-3 recall, specificity.

    Each split is scored on its own (train and test are never pooled)."""
    from watchkeeper.evaluation.petshop import DatasetError, evaluate

    splits = ("train", "test") if split is RcaSplit.all else (split.value,)
    try:
        result = evaluate(directory, splits)
    except DatasetError as exc:
        raise fail(str(exc)) from exc
    summary: dict[str, Any] = {"dataset": dataset.value, "splits": list(splits)}
    if len(splits) == 1:
        summary["scenarios"] = result["splits"][splits[0]]["scenarios"]
    else:
        summary["by_split"] = {s: {"scenarios": r["scenarios"]} for s, r in result["splits"].items()}
    if details:
        summary["issues"] = result["issues"]
    if not as_json:
        for name, scored in result["splits"].items():
            _print_scores(f"scenario ({name})", scored["scenarios"])
            _print_scores(f"scenario/target metric ({name})", scored["targets"])
    print(json.dumps(summary))


@app.command()
def drill(
    faults: Annotated[str, typer.Option(help="Comma-separated fault ids (default: all)")] = "",
    seed: Annotated[int, typer.Option(help="Demo stream seed")] = 7,
    inject_after: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds from the stack being healthy to the injections (after the warm-up)"
        ),
    ] = float(WARM_UP_SECONDS),
    rate: Annotated[float, typer.Option(min=5, max=100, help="Predictions per second per model")] = 10.0,
    clean_minutes: Annotated[
        float, typer.Option(min=1, help="Minutes the clean model runs without injection")
    ] = 30.0,
    day_minutes: Annotated[
        float,
        typer.Option(min=0, help="Every model's daily traffic cycle, compressed to this long (0: flat)"),
    ] = 120.0,
    home: Annotated[
        Path | None, typer.Option(help="Folder for the drill's stack (default: a new temp dir)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON")] = False,
) -> None:
    """Inject every failure class the demo knows, each on a model of its own, through a stack of its
    own (`watchkeeper up` on free ports), and report what fired, when, and what was decided."""
    from watchkeeper.evaluation.drill import FAULTS, Drill, DrillOptions

    wanted = tuple(f for f in faults.split(",") if f) or tuple(FAULTS)
    try:
        options = DrillOptions(wanted, seed, inject_after, rate, clean_minutes, day_minutes=day_minutes)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    folder = home or Path(tempfile.mkdtemp(prefix="watchkeeper-drill-"))
    log = (lambda _m: None) if as_json else (lambda m: errors.print(m, highlight=False))
    log(f"drill home {folder}: {len(wanted)} faults and a clean model, {clean_minutes:g} clean minutes")
    ports = {
        name: free_port() for name in ("prefect", "service", "prometheus", "alertmanager", "notifications")
    }
    try:
        result = Drill(options, folder, log).run(ports)
    except RuntimeError as exc:
        raise fail(str(exc)) from exc
    if not as_json:
        table = Table(
            "fault", "detected", "to webhook (s)", "to incident (s)", "first alerts", "root cause", "decision"
        )
        for fault, row in result["faults"].items():
            first = sorted(row["alerts"], key=lambda a: row["alerts"][a] or 0)[:2]
            table.add_row(
                fault,
                "yes" if row["detected"] else "NO",
                str(row["seconds_to_webhook"]),
                str(row["seconds_to_incident"]),
                ", ".join(first),
                str(row["root_cause"]),
                str(row["decision"]),
            )
        console.print(table)
        console.print(
            f"clean run: {result['clean']['false_alerts']} false alerts in {result['clean']['minutes']} min"
        )
    print(json.dumps(result))
