"""backfill-drift on a real (test harness) Prefect API: one result and one snapshot per window; the
`watchkeeper backfill` command with its times parsed by Typer, and its failure said."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from evidently.ui.workspace import Workspace
from sqlalchemy import func, select
from typer.testing import CliRunner

from flows.backfill_drift import backfill_drift, backfill_windows
from tests.conftest import save_predictions
from watchkeeper.cli import app
from watchkeeper.intake.records import PredictionRecord
from watchkeeper.local.demo import DemoTraffic, Injections
from watchkeeper.settings import DEFAULT_CONFIG
from watchkeeper.store import Store
from watchkeeper.store.schema import EvaluationResult

START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
PER_HOUR = 1500  # above 1,000 rows Evidently picks distance-based methods, steadier than p-values


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Store) -> Path:
    """A Watchkeeper home with 4 hours of demo predictions; salary and age shift in the last hour."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["models"][0]["reference"] = {"kind": "period", "duration": "1h"}
    config["models"][0]["windows"]["min_rows"] = 100
    (tmp_path / "watchkeeper.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("WATCHKEEPER_HOME", str(tmp_path))
    monkeypatch.setenv("WATCHKEEPER_CONFIG", str(tmp_path / "watchkeeper.yaml"))
    monkeypatch.setenv("WATCHKEEPER_DATABASE_URL", store.url.render_as_string(hide_password=False))
    traffic = DemoTraffic(train_size=500, seed=3, injections=Injections(covariate_drift_at=3 * PER_HOUR))
    events = traffic.next_batch(4 * PER_HOUR)
    records = [
        PredictionRecord.model_validate(
            traffic.prediction_record(e, START + timedelta(seconds=3600 * i / PER_HOUR))
        )
        for i, e in enumerate(events)
    ]
    save_predictions(store, records)
    return tmp_path


def snapshot_ids(path: Path, model_name: str) -> list[str]:
    workspace = Workspace.create(str(path))
    [project] = [p for p in workspace.list_projects() if p.name == model_name]
    return [str(run_id) for run_id in workspace.list_runs(project.id)]


def results_per_window(store: Store) -> dict[datetime, int]:
    with store.reading() as session:
        rows = session.execute(
            select(EvaluationResult.window_start, func.count())
            .where(EvaluationResult.kind == "drift", EvaluationResult.metric == "drift_share")
            .group_by(EvaluationResult.window_start)
        ).all()
    return dict(rows)


def test_windows_cover_the_range() -> None:
    windows = backfill_windows(START, START + timedelta(hours=2), timedelta(hours=1), timedelta(minutes=30))
    assert [(w.start - START, w.end - START) for w in windows] == [
        (timedelta(0), timedelta(hours=1)),
        (timedelta(minutes=30), timedelta(minutes=90)),
        (timedelta(hours=1), timedelta(hours=2)),
    ]
    with pytest.raises(ValueError, match="must be after start"):
        backfill_windows(START, START, timedelta(hours=1), timedelta(hours=1))


def test_a_backfill_run_twice_leaves_one_result_per_window(
    prefect_api: None, home: Path, store: Store
) -> None:
    parameters = {
        "model": "credit_approval",
        "start": START + timedelta(hours=1),
        "end": START + timedelta(hours=4),
        "window": "1h",
        "step": "1h",
    }
    first = backfill_drift(**parameters)
    second = backfill_drift(**parameters)
    assert first["windows"] == second["windows"] == 3 and first["evaluated"] == 3
    assert first["drifted_features_by_window"] == {
        (START + timedelta(hours=3)).isoformat(): ["age", "salary"]
    }
    assert list(results_per_window(store).values()) == [1, 1, 1]
    assert len(snapshot_ids(home / "evidently", "credit_approval")) == 3


def backfill_command(*args: str) -> Result:
    """`watchkeeper backfill` as Typer parses it, in this process (on the test harness's Prefect)."""
    return CliRunner().invoke(app, ["backfill", "credit_approval", *args])


def test_the_command_takes_times_with_offsets_as_their_utc_instants(prefect_api: None, home: Path) -> None:
    # 03:00 at +02:00 is 01:00 UTC: three windows of an hour, the last one drifted.
    ran = backfill_command(
        "--start", "2026-11-20T03:00:00+02:00", "--end", "2026-11-20T04:00:00Z", "--window", "1h", "--json"
    )
    assert ran.exit_code == 0, ran.output
    summary = json.loads(ran.stdout)
    assert summary["windows"] == 3
    assert summary["drifted_features_by_window"] == {"2026-11-20T03:00:00+00:00": ["age", "salary"]}
    naive = backfill_command("--start", "2026-11-20T03:00:00", "--end", "2026-11-20T04:00:00", "--json")
    assert json.loads(naive.stdout)["windows"] == 1  # without an offset: UTC
    bad = backfill_command("--start", "20 Nov", "--end", "2026-11-20T04:00:00Z")
    assert bad.exit_code == 2 and "expected an ISO-8601 time" in bad.output


def test_a_failing_backfill_says_why(prefect_api: None, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load((home / "watchkeeper.yaml").read_text())
    config["models"][0]["reference"] = {"kind": "sql", "query": "SELECT * FROM no_such_table"}
    (home / "watchkeeper.yaml").write_text(yaml.safe_dump(config))
    ran = backfill_command("--start", "2026-11-20T01:00:00Z", "--end", "2026-11-20T02:00:00Z")
    assert ran.exit_code == 1
    assert "the drift backfill failed" in ran.stderr and "no_such_table" in ran.stderr
