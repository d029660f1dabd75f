from pathlib import Path

import pytest
import yaml

from watchkeeper.config import ConfigError, FileReference, load_config
from watchkeeper.settings import DEFAULT_CONFIG


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "watchkeeper.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def example() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_example_config_loads_with_its_models_and_topology() -> None:
    config = load_config(DEFAULT_CONFIG)
    model = config.model("credit_approval")
    assert model is not None and model.version == "v1"
    assert [f.name for f in model.features][:3] == ["salary", "commission", "age"]
    assert model.windows.drift.total_seconds() == 1800
    assert config.topology.services["credit-approval-api"] == ["model-server", "feature-store"]
    assert config.schedules.collect_model_metrics.total_seconds() == 15


def test_unknown_key_names_file_and_key_path(tmp_path: Path) -> None:
    data = example()
    data["models"][0]["windows"]["drfit"] = "1h"
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert "models[0].windows.drfit: unknown key" in message


def test_bad_value_says_what_was_expected(tmp_path: Path) -> None:
    data = example()
    data["models"][0]["features"][2]["type"] = "float"
    data["schedules"]["evaluate_drift"] = "every now and then"
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, data))
    message = str(raised.value)
    expected = "Input should be 'numerical', 'categorical', 'text' or 'embedding'"
    assert f"models[0].features[2].type: {expected}" in message
    assert "schedules.evaluate_drift: expected a duration such as '30s'" in message


def test_literal_secret_is_refused(tmp_path: Path) -> None:
    data = example()
    data["notifications"][0]["secret"] = {"value": "https://hooks.slack.com/services/T/B/X"}
    with pytest.raises(ConfigError, match=r"notifications\[0\]\.secret\.value: unknown key"):
        load_config(write(tmp_path, data))


def test_secret_reference_needs_exactly_one_source(tmp_path: Path) -> None:
    data = example()
    data["notifications"][0]["secret"] = {"env": "A", "prefect_secret": "b"}
    with pytest.raises(ConfigError, match=r"notifications\[0\]\.secret: expected exactly one of"):
        load_config(write(tmp_path, data))


def test_topology_dependency_must_be_a_listed_service(tmp_path: Path) -> None:
    data = example()
    data["topology"]["services"]["model-server"] = ["gpu-pool"]
    with pytest.raises(ConfigError, match="depends on 'gpu-pool', which is not listed"):
        load_config(write(tmp_path, data))


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (
            {"gpu-1:9100": ["gpu-pool"]},
            "host 'gpu-1:9100' runs 'gpu-pool', which is not listed under services",
        ),
        ({"model-server": []}, "host 'model-server' has the name of a service: expected a node exporter"),
        ({"": []}, r"topology\.hosts\.: .*at least 1 character"),
    ],
)
def test_a_host_runs_listed_services_and_is_not_one(tmp_path: Path, hosts: dict, message: str) -> None:
    data = example()
    data["topology"]["hosts"] = hosts
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, data))


def test_a_host_is_a_dependency_of_the_services_it_runs() -> None:
    topology = load_config(DEFAULT_CONFIG).topology
    graph = topology.dependencies()
    assert graph["credit-approval-api"] == ["model-server", "feature-store", "localhost"]
    assert graph["localhost"] == [] and graph["feature-db"] == []
    assert topology.services["credit-approval-api"] == ["model-server", "feature-store"]  # not changed


def test_dataset_must_name_a_configured_model(tmp_path: Path) -> None:
    data = example()
    data["datasets"][0]["model"] = "fraud"
    with pytest.raises(ConfigError, match="names model 'fraud'"):
        load_config(write(tmp_path, data))


def test_reference_file_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    data = example()
    data["models"][0]["reference"] = {"kind": "file", "path": "ref/credit.parquet"}
    reference = load_config(write(tmp_path, data)).models[0].reference
    assert isinstance(reference, FileReference)
    assert reference.path == tmp_path / "ref" / "credit.parquet"


def test_a_reference_file_under_home_follows_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = example()
    data["models"][0]["reference"] = {"kind": "file", "path": "{home}/reference/credit.parquet"}
    path = write(tmp_path, data)
    assert (
        load_config(path, tmp_path / "a").models[0].reference.path
        == tmp_path / "a" / "reference" / "credit.parquet"
    )
    monkeypatch.setenv("WATCHKEEPER_HOME", str(tmp_path / "b"))
    assert load_config(path).models[0].reference.path == tmp_path / "b" / "reference" / "credit.parquet"


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(write(tmp_path, ["models"]))


@pytest.mark.parametrize(
    ("written", "fraction"),
    [("all", 1.0), ("none", 0.0), ("1%", 0.01), ("0.25", 0.25), (0.5, 0.5), ("ALL", 1.0)],
)
def test_raw_predictions_take_all_none_a_percentage_or_a_share(
    tmp_path: Path, written: object, fraction: float
) -> None:
    data = example()
    data["intake"]["raw_predictions"] = written
    assert load_config(write(tmp_path, data)).intake.raw_predictions == fraction


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("raw_predictions", "150%", "intake.raw_predictions: Input should be less than or equal to 1"),
        ("raw_predictions", "some", "intake.raw_predictions: Input should be a valid number"),
        ("bucket", "7s", "intake.bucket: expected whole seconds that divide a day"),
        ("bucket", "1.5s", "intake.bucket: expected whole seconds that divide a day"),
    ],
)
def test_intake_volume_settings_say_what_was_expected(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    data = example()
    data["intake"][key] = value
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, data))
    assert expected in str(raised.value)


def test_a_trace_link_names_where_the_trace_id_goes(tmp_path: Path) -> None:
    data = example()
    data["traces"] = {"link": "http://jaeger:16686/trace/{trace_id}"}
    traces = load_config(write(tmp_path, data)).traces
    assert (
        traces.url("0af7651916cd43dd8448eb211c80319c")
        == "http://jaeger:16686/trace/0af7651916cd43dd8448eb211c80319c"
    )
    assert traces.url(None) is None
    data["traces"] = {"link": "http://jaeger:16686/trace/"}
    with pytest.raises(ConfigError, match=r"traces\.link: .*expected an http\(s\) URL with \{trace_id\}"):
        load_config(write(tmp_path, data))
