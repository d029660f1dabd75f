"""The installed `watchkeeper` command, as operators run it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from watchkeeper.settings import DEFAULT_CONFIG
from watchkeeper.store import Store

WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")


def run(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "WATCHKEEPER_HOME": str(home), **env}
    return subprocess.run([WATCHKEEPER, *args], capture_output=True, text=True, env=environment, timeout=120)


def test_a_bad_config_stops_start_up_with_one_clear_message(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["models"][0]["thresholds"]["min_label_coverage"] = 1.5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = run("--config", str(bad), "serve", "--port", "1", home=tmp_path)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert str(bad) in message
    assert "models[0].thresholds.min_label_coverage: Input should be less than or equal to 1" in message


def test_config_comes_from_the_environment_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: []\nsurprise: 1\n")
    result = run("up", home=tmp_path, WATCHKEEPER_CONFIG=str(bad))
    assert result.returncode == 2
    assert (
        "surprise: unknown key" in result.stderr
        and "models: List should have at least 1 item" in result.stderr
    )


def test_db_upgrade_creates_the_store_in_the_home(tmp_path: Path) -> None:
    result = run("db", "upgrade", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"store at revision {Store.head_revision()}" in result.stdout
    assert (tmp_path / "watchkeeper.db").exists()


def test_db_upgrade_migrates_the_configured_database(empty_store_url: str, tmp_path: Path) -> None:
    result = run("db", "upgrade", home=tmp_path, WATCHKEEPER_DATABASE_URL=empty_store_url)
    assert result.returncode == 0, result.stderr
    assert f"store at revision {Store.head_revision()}" in result.stdout
    store = Store(empty_store_url)
    try:
        assert store.current_revision() == Store.head_revision()
    finally:
        store.dispose()


def demo_file(path: Path, covariate_drift: bool, seed: int) -> Path:
    from watchkeeper.local.demo import DemoTraffic, Injections

    injections = Injections(covariate_drift_at=0) if covariate_drift else Injections()
    events = DemoTraffic(train_size=200, seed=seed, injections=injections).next_batch(1500)
    frame = pd.DataFrame([{**e.features, "prediction": e.prediction} for e in events])
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def test_drift_report_flags_shifted_columns_and_stays_quiet_on_a_stationary_split(tmp_path: Path) -> None:
    reference = demo_file(tmp_path / "reference.parquet", covariate_drift=False, seed=1)
    stationary = demo_file(tmp_path / "stationary.csv", covariate_drift=False, seed=2)
    shifted = demo_file(tmp_path / "shifted.csv", covariate_drift=True, seed=3)
    html = tmp_path / "report.html"
    quiet = run(
        "drift-report", "--reference", str(reference), "--current", str(stationary), "--json", home=tmp_path
    )
    loud = run(
        "drift-report",
        "--reference",
        str(reference),
        "--current",
        str(shifted),
        "--json",
        "--html",
        str(html),
        home=tmp_path,
    )
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    quiet_report, loud_report = json.loads(quiet.stdout), json.loads(loud.stdout)
    assert not any(c["drifted"] for c in quiet_report["columns"]) and quiet_report["share"] == 0
    assert {c["column"] for c in loud_report["columns"] if c["drifted"]} == {"salary", "age"}
    assert set(loud_report["columns"][0]) == {
        "column",
        "method",
        "score",
        "threshold",
        "drifted",
        "adjusted_p_value",
    }
    assert loud_report["share"] == pytest.approx(2 / 10)
    assert "<html" in html.read_text()[:2000].lower()


def test_drift_report_names_a_bad_column_or_file(tmp_path: Path) -> None:
    reference = demo_file(tmp_path / "reference.csv", covariate_drift=False, seed=1)
    missing = run(
        "drift-report",
        "--reference",
        str(reference),
        "--current",
        str(reference),
        "--columns",
        "salary,income",
        home=tmp_path,
    )
    assert missing.returncode == 2 and "column 'income' is not in the reference data" in missing.stderr
    wrong = run(
        "drift-report", "--reference", str(tmp_path / "x.xlsx"), "--current", str(reference), home=tmp_path
    )
    assert wrong.returncode == 2 and "expected a .csv or .parquet file" in wrong.stderr


def test_run_refuses_an_unknown_flow(tmp_path: Path) -> None:
    result = run("run", "evaluate-everything", home=tmp_path)
    assert result.returncode == 2 and "unknown flow 'evaluate-everything'" in result.stderr
    assert "backfill-drift" in result.stderr
