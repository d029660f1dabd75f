"""`watchkeeper rca-eval petshop`: the dataset's format, production's ranking, the authors' scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.test_cli import run
from watchkeeper.evaluation.petshop import evaluate

NODES = ["Front", "Api", "Db", "Cache", "Api_client"]
# Front calls Api and Cache; Api calls Db; Api_client (an observer) calls Api.
EDGES = [("Front", "Api"), ("Front", "Cache"), ("Api", "Db"), ("Api_client", "Api")]
STEP = 300


def metrics(
    rows: int, start: int, rng: np.random.Generator, slow: dict[str, list[float]] | None = None
) -> pd.DataFrame:
    base = {"Front": 0.10, "Api": 0.05, "Db": 0.01, "Cache": 0.002, "Api_client": 0.05}
    columns, data = [], []
    for node in NODES:
        latency = base[node] * (1 + 0.03 * rng.standard_normal(rows))
        for extra_node, extra in (slow or {}).items():
            if extra_node == node:
                latency = latency + np.array(extra)
        for metric, statistic, values in (
            ("latency", "Average", latency),
            ("availability", "Average", np.full(rows, 100.0)),
            ("requests", "Sum", 1000 + 20 * rng.standard_normal(rows)),
        ):
            columns.append((node, metric, statistic))
            data.append(values)
    frame = pd.DataFrame(np.array(data).T, columns=pd.MultiIndex.from_tuples(columns))
    frame.index = [float(start + STEP * i) for i in range(rows)]
    return frame


def write(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [
        ["microservice", *[c[0] for c in frame.columns]],
        ["metric", *[c[1] for c in frame.columns]],
        ["statistic", *[c[2] for c in frame.columns]],
    ]
    lines = [",".join(h) for h in header]
    lines += [
        ",".join([repr(t), *(repr(float(v)) for v in row)])
        for t, row in zip(frame.index, frame.to_numpy(), strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def dataset(root: Path) -> Path:
    rng = np.random.default_rng(7)
    scenario = root / "synthetic"
    graph = pd.DataFrame(0.0, index=NODES, columns=NODES)
    for caller, callee in EDGES:
        graph.loc[caller, callee] = 1.0
    scenario.mkdir(parents=True)
    graph.to_csv(scenario / "graph.csv")
    write(metrics(400, 1_000_000, rng), scenario / "noissue" / "metrics.csv")
    # A slow database shows in Api and Front too, a little later and diluted; a slow cache in Front only.
    issues = {
        "issue_0": (
            "Db",
            {
                "Db": [0, 0, 0.05, 0.05, 0],
                "Api": [0, 0, 0.05, 0.05, 0],
                "Front": [0, 0, 0.05, 0.05, 0],
                "Api_client": [0, 0, 0.08, 0.08, 0],
            },
        ),
        "issue_1": ("Cache", {"Cache": [0, 0.01, 0.02, 0.02, 0], "Front": [0, 0, 0.02, 0.02, 0]}),
    }
    for offset, (name, (cause, slow)) in enumerate(issues.items()):
        folder = scenario / "train" / name
        write(metrics(5, 2_000_000 + 10_000 * offset, rng, slow), folder / "metrics.csv")
        target = {
            "target": {"node": "Front", "metric": "latency", "agg": "Average", "timestamp": 0},
            "root_cause": {"node": cause, "metric": None},
        }
        (folder / "target.json").write_text(json.dumps(target))
    return root


def test_rca_eval_ranks_the_injected_cause_first_and_stays_quiet_on_normal_windows(tmp_path: Path) -> None:
    result = run("rca-eval", "petshop", str(dataset(tmp_path / "petshop")), home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "synthetic/latency" in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    scores = summary["scenarios"]["synthetic"]
    assert (scores["top1"], scores["top3"], scores["n"]) == (1.0, 1.0, 2)
    assert scores["specificity"] >= 0.9 and scores["specificity_windows"] > 50


def test_rca_eval_names_what_is_wrong_with_the_folder(tmp_path: Path) -> None:
    result = run("rca-eval", "petshop", str(tmp_path), home=tmp_path)
    assert result.returncode == 2 and "graph.csv" in result.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "graph.csv").write_text("a,b\n")
    (tmp_path / "broken" / "train" / "issue_0").mkdir(parents=True)
    (tmp_path / "broken" / "train" / "issue_0" / "target.json").write_text("{}")
    result = run("rca-eval", "petshop", str(tmp_path), "--json", home=tmp_path)
    assert result.returncode == 2 and "target.json" in result.stderr and "root_cause.node" in result.stderr


def renamed(root: Path, names: dict[str, str]) -> Path:
    """A copy of the dataset with every node renamed."""
    copy = root.parent / f"{root.name}-renamed"
    for path in root.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for old in sorted(names, key=len, reverse=True):
                text = text.replace(old, names[old])
            (copy / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(root)).write_text(text)
    return copy


def test_rankings_do_not_depend_on_node_names(tmp_path: Path) -> None:
    """Renaming every node (into names an X-Ray reader might treat specially) changes no ranking."""
    root = dataset(tmp_path / "petshop")
    names = {node: f"svc{i}_remote" if i % 2 else f"svc{i}_client" for i, node in enumerate(NODES)}
    original, other = evaluate(root, ("train",)), evaluate(renamed(root, names), ("train",))
    back = {new: old for old, new in names.items()}
    assert [[back[c["node"]] for c in i["candidates"]] for i in other["issues"]] == [
        [c["node"] for c in i["candidates"]] for i in original["issues"]
    ]
    assert other["splits"] == original["splits"]


def test_splits_are_scored_apart_and_details_list_each_issue_s_candidates(tmp_path: Path) -> None:
    root = dataset(tmp_path / "petshop")
    result = run("rca-eval", "petshop", str(root), "--split", "all", "--json", "--details", home=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert "scenarios" not in summary  # never pooled
    assert summary["by_split"]["train"]["scenarios"]["synthetic"]["n"] == 2
    assert summary["by_split"]["test"]["scenarios"]["synthetic"]["n"] == 0
    [db, cache] = [i for i in summary["issues"] if i["split"] == "train"]
    assert (db["root_cause"], db["candidates"][0]["node"]) == ("Db", "Db")
    assert any("explains" in reason for reason in db["candidates"][0]["reasons"])
    assert cache["candidates"][0]["node"] == "Cache"
