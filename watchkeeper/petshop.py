"""Root-cause ranking measured on the PetShop dataset (Amazon Science), with production's engine.

For each issue, a detector turns the metrics into alerts, the correlation engine groups them and
`rank_root_causes` ranks the incident that holds the target's alert: the same code that handles
Alertmanager's alerts, fed with the dataset's call graph as the topology.

The detector, per node, on the target's metric and statistic (for example latency / Average):
  - baseline: the `noissue` series (for specificity, only the part before the cut), giving a
    median m and a scale s = max(1.4826 x MAD, `RELATIVE_FLOOR` x |m|, `ABSOLUTE_FLOOR`); the floors
    keep a near-constant series (availability at 100 %) from making every wiggle infinitely odd;
  - score z = (x - m) / s in the harmful direction: latency up, availability down, requests
    either way;
  - a node alerts at the analysed row when z >= `threshold`; its alert starts at the first row of
    the run of alerting rows that ends there, and its strength is z. An alert already firing in the
    window's first row started at an unknown earlier time: it is dated one correlation window before
    that row, as Alertmanager's startsAt would date a long-standing alert, so a chronic anomaly does
    not join a fresh incident.
The analysed row is the third of the issue's window (the authors' choice, the window being cut
around the violation); if the target does not alert there, the next row where it does. No target
alert, no root cause.

Specificity follows the authors' cuts of `noissue` (at 50, 60, 70, 80 and 90 % of its rows) but is
stricter: every five-row window after a cut, not just one, is analysed with the rows before the
cut as baseline, and it counts as correct when no root cause is reported at all.

Nodes that X-Ray names `..._remote` or `..._client` are a caller's view of a call: their alerts
count as evidence, but they are not ranked as root causes.

Scenarios without a `noissue` folder (the temporal ones) use the pooled `noissue` of the other
scenarios as baseline for the nodes they share; their specificity cannot be measured (n = 0).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.correlation import AlertEvent, CorrelationRules, Correlator, rank_root_causes
from watchkeeper.config import Correlation, Topology

SPLITS = ("train", "test")
CUTS = (0.5, 0.6, 0.7, 0.8, 0.9)
WINDOW_ROWS = 5
ANALYSED_ROW = 2
# A series seen fewer times in the baseline (S3 at low traffic: 10 of 589 rows) has no usable normal.
RELATIVE_FLOOR = 0.01
MIN_BASELINE_POINTS = 30
OBSERVATION_SUFFIXES = ("_remote", "_client")
ABSOLUTE_FLOOR = 1e-6
CORRELATION_WINDOW = timedelta(minutes=10)
HARMFUL_DIRECTION = {"latency": 1, "availability": -1}


class DatasetError(ValueError):
    """The folder does not hold the PetShop dataset's layout."""


@dataclass(frozen=True)
class Detector:
    threshold: float = 2.5

    def scores(self, baseline: pd.DataFrame, window: pd.DataFrame, metric: str) -> pd.DataFrame:
        """Harmful-direction robust z-scores of the window, per node (columns) and row."""
        nodes = [n for n in window.columns if n in baseline.columns]
        base = baseline[nodes]
        median = base.median()
        mad = (base - median).abs().median()
        scale = np.maximum(np.maximum(1.4826 * mad, RELATIVE_FLOOR * median.abs()), ABSOLUTE_FLOOR)
        z = (window[nodes] - median) / scale
        direction = HARMFUL_DIRECTION.get(metric)
        z = z.abs() if direction is None else z * direction
        usable = base.notna().sum() >= MIN_BASELINE_POINTS
        return z.loc[:, usable[usable].index]

    def alerts(
        self, baseline: pd.DataFrame, window: pd.DataFrame, target: str, metric: str, statistic: str
    ) -> list[AlertEvent]:
        """The alerts at the analysed row, or none when the target does not alert in the window."""
        signals = {metric: statistic} | {m: "Average" for m in HARMFUL_DIRECTION if m != metric}
        scores = {
            m: self.scores(series(baseline, m, st), series(window, m, st), m).fillna(0.0)
            for m, st in signals.items()
        }
        if target not in scores[metric].columns:
            return []
        firing_target = scores[metric][target] >= self.threshold
        rows = [r for r in range(ANALYSED_ROW, len(firing_target)) if firing_target.iloc[r]]
        if not rows:
            return []
        row, alerts = rows[0], []
        for m, z in scores.items():
            firing = z >= self.threshold
            for node in z.columns:
                if firing[node].iloc[row]:
                    alerts.append(self._alert(len(alerts), node, m, firing[node], z[node].iloc[row], row))
        return alerts

    @staticmethod
    def _alert(alert_id: int, node: str, metric: str, firing: pd.Series, z: float, row: int) -> AlertEvent:
        start = row
        while start > 0 and firing.iloc[start - 1]:
            start -= 1
        starts_at = _at(firing.index[start])
        if start == 0:
            starts_at -= CORRELATION_WINDOW
        return AlertEvent(
            id=alert_id,
            name=f"{metric}_anomalous",
            service=node,
            starts_at=starts_at,
            labels={"node": node, "metric": metric},
            strength=float(z),
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    topology: Topology
    normal: pd.DataFrame | None
    issues: dict[str, list[tuple[str, pd.DataFrame, dict]]]


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(float(timestamp), UTC)


def _read_metrics(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, header=[0, 1, 2], index_col=0)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: expected a metrics CSV with three header rows ({exc})") from exc


def _read_topology(path: Path) -> Topology:
    """graph.csv: row a, column b = 1 means a calls b, so a depends on b."""
    try:
        matrix = pd.read_csv(path, index_col=0)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: expected the call graph's adjacency matrix ({exc})") from exc
    nodes = list(dict.fromkeys([*matrix.index, *matrix.columns]))
    services: dict[str, list[str]] = {node: [] for node in nodes}
    for caller in matrix.index:
        services[caller] = sorted({c for c in matrix.columns if matrix.loc[caller, c] == 1 and c != caller})
    return Topology.model_construct(services=services)


def load_scenario(folder: Path, splits: tuple[str, ...]) -> Scenario:
    if not (folder / "graph.csv").is_file():
        raise DatasetError(f"{folder}: expected graph.csv (the call graph) in a scenario folder")
    normal_path = folder / "noissue" / "metrics.csv"
    issues: dict[str, list[tuple[str, pd.DataFrame, dict]]] = {}
    for split in splits:
        split_dir = folder / split
        issues[split] = []
        if not split_dir.is_dir():
            continue
        for issue_dir in sorted(split_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
            if issue_dir.name.startswith("."):
                continue
            target_path = issue_dir / "target.json"
            try:
                target = json.loads(target_path.read_text())
                target["target"]["node"], target["root_cause"]["node"]  # noqa: B018
            except (OSError, ValueError, KeyError, TypeError) as exc:
                expected = "expected target.node and root_cause.node"
                raise DatasetError(f"{target_path}: {expected} ({exc})") from exc
            issues[split].append((issue_dir.name, _read_metrics(issue_dir / "metrics.csv"), target))
    normal = _read_metrics(normal_path) if normal_path.is_file() else None
    return Scenario(folder.name, _read_topology(folder / "graph.csv"), normal, issues)


def scenarios(root: Path, splits: tuple[str, ...]) -> list[Scenario]:
    folders = sorted(p for p in root.iterdir() if (p / "graph.csv").is_file()) if root.is_dir() else []
    if not folders:
        raise DatasetError(f"{root}: expected scenario folders holding graph.csv (the PetShop layout)")
    return [load_scenario(folder, splits) for folder in folders]


def series(frame: pd.DataFrame, metric: str, statistic: str) -> pd.DataFrame:
    selected = frame.loc[:, (slice(None), metric, statistic)]
    selected.columns = [c[0] for c in selected.columns]
    return selected.T.groupby(level=0).first().T


def rank_issue(
    rules: CorrelationRules,
    detector: Detector,
    baseline: pd.DataFrame,
    window: pd.DataFrame,
    metric: str,
    statistic: str,
    target: str,
) -> list[str]:
    """Ranked root-cause nodes for one SLO violation; empty when nothing is reported."""
    alerts = detector.alerts(baseline, window, target, metric, statistic)
    if not alerts:
        return []
    alerts.sort(key=lambda a: (a.starts_at, a.id))
    correlator = Correlator(rules)
    memberships = correlator.add_all(alerts)
    target_alert = next(
        i for i, a in enumerate(alerts) if a.service == target and a.name == f"{metric}_anomalous"
    )
    incident = correlator.incidents[memberships[target_alert].incident_id]
    return [c.subject for c in rank_root_causes(incident.members, rules, can_be_cause=is_component)]


def is_component(node: str) -> bool:
    """X-Ray names a caller's view of a call `..._remote` or `..._client`: an observation of the
    caller, not a component a fault can live in, so it is evidence but never a candidate."""
    return not node.endswith(OBSERVATION_SUFFIXES)


def correlation_rules(topology: Topology) -> CorrelationRules:
    """Production's engine on the call graph: direct calls relate alerts (so an incident is a connected
    part of the anomalous call graph), and the window is two of the dataset's five-minute rows."""
    return CorrelationRules(
        topology, Correlation(window=CORRELATION_WINDOW, dependency_hops=1, causal_rules={})
    )


def _pooled_normal(all_scenarios: list[Scenario]) -> pd.DataFrame | None:
    frames = [s.normal for s in all_scenarios if s.normal is not None]
    return pd.concat(frames, axis=0, ignore_index=True) if frames else None


def _specificity_windows(normal: pd.DataFrame) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    rows = len(normal)
    for cut in CUTS:
        split = int(rows * cut)
        for start in range(split, rows - WINDOW_ROWS + 1, WINDOW_ROWS):
            yield normal.iloc[:split], normal.iloc[start : start + WINDOW_ROWS]


@dataclass
class Tally:
    hits1: int = 0
    hits3: int = 0
    n: int = 0
    quiet: int = 0
    windows: int = 0

    def as_json(self) -> dict[str, float | int | None]:
        return {
            "top1": round(self.hits1 / self.n, 3) if self.n else None,
            "top3": round(self.hits3 / self.n, 3) if self.n else None,
            "specificity": round(self.quiet / self.windows, 3) if self.windows else None,
            "n": self.n,
            "specificity_windows": self.windows,
        }


def evaluate(root: Path, splits: tuple[str, ...], detector: Detector = Detector()) -> dict[str, dict]:
    """Top-1, top-3 and specificity per scenario and per (scenario, target metric)."""
    loaded = scenarios(root, splits)
    pooled = _pooled_normal(loaded)
    per_scenario: dict[str, Tally] = defaultdict(Tally)
    per_metric: dict[str, Tally] = defaultdict(Tally)
    issues_out = []
    for scenario in loaded:
        rules = correlation_rules(scenario.topology)
        normal = scenario.normal if scenario.normal is not None else pooled
        targets = set()
        for split in splits:
            for issue_name, window, target in scenario.issues[split]:
                node, metric, statistic = (target["target"][k] for k in ("node", "metric", "agg"))
                targets.add((node, metric, statistic))
                ranked = (
                    []
                    if normal is None
                    else rank_issue(rules, detector, normal, window, metric, statistic, node)
                )
                truth = target["root_cause"]["node"]
                for tally in (per_scenario[scenario.name], per_metric[f"{scenario.name}/{metric}"]):
                    tally.n += 1
                    tally.hits1 += truth in ranked[:1]
                    tally.hits3 += truth in ranked[:3]
                issues_out.append(
                    {
                        "scenario": scenario.name,
                        "split": split,
                        "issue": issue_name,
                        "metric": metric,
                        "truth": truth,
                        "ranked": ranked[:3],
                    }
                )
        if scenario.normal is None:
            continue
        for node, metric, statistic in sorted(targets):
            for baseline, window in _specificity_windows(scenario.normal):
                quiet = not rank_issue(rules, detector, baseline, window, metric, statistic, node)
                for tally in (per_scenario[scenario.name], per_metric[f"{scenario.name}/{metric}"]):
                    tally.windows += 1
                    tally.quiet += quiet
    return {
        "scenarios": {name: t.as_json() for name, t in sorted(per_scenario.items())},
        "targets": {name: t.as_json() for name, t in sorted(per_metric.items())},
        "issues": issues_out,
    }
