"""The installed `watchkeeper` command, as operators run it."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from watchkeeper.settings import DEFAULT_CONFIG

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
    assert "store at revision 0001" in result.stdout
    assert (tmp_path / "watchkeeper.db").exists()
