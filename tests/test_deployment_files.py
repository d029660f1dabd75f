"""infra/compose.yaml and infra/kubernetes agree with each other and with the configs they ship."""

from __future__ import annotations

import re

import yaml

from watchkeeper.local.stack import INFRA, Ports

COMPONENTS = ("postgres", "prefect-server", "watchkeeper", "prometheus", "alertmanager", "grafana")
DEFAULT_PORTS = {
    "prefect-server": Ports().prefect,
    "watchkeeper": Ports().service,
    "prometheus": Ports().prometheus,
    "alertmanager": Ports().alertmanager,
    "grafana": 3000,
    "postgres": 5432,
}


def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]


def manifests() -> list[dict]:
    kustomization = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((INFRA / resource).read_text()) if d]
    return docs


def k8s(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def containers() -> dict[str, dict]:
    found = {}
    for workload in [*k8s("Deployment").values(), *k8s("StatefulSet").values()]:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            found[container["name"]] = container
    return found


def test_every_component_is_in_both_with_the_same_image() -> None:
    services, pods = compose(), containers()
    for name in (*COMPONENTS, "watchkeeper-executor"):
        assert services[name]["image"] == pods[name]["image"], name


def test_kubernetes_services_expose_the_container_ports_on_the_shipped_defaults() -> None:
    pods = containers()
    for name, service in k8s("Service").items():
        [port] = service["spec"]["ports"]
        assert port["port"] == DEFAULT_PORTS[name], name
        assert port["targetPort"] in {p["containerPort"] for p in pods[name]["ports"]}, name
        assert service["spec"]["selector"] == {"app": name}


def test_compose_listens_on_loopback_at_the_shipped_default_ports() -> None:
    services = compose()
    for name, port in DEFAULT_PORTS.items():
        text = yaml.safe_dump(services[name])
        assert "127.0.0.1" in text and re.search(rf"\b{port}\b", text), name
        assert services[name]["network_mode"] == "host"


def test_kubernetes_prometheus_config_is_the_shipped_one_with_service_targets() -> None:
    shipped = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    cluster = yaml.safe_load((INFRA / "kubernetes" / "prometheus.yml").read_text())
    services = {name: s["spec"]["ports"][0]["port"] for name, s in k8s("Service").items()}
    for config in (shipped, cluster):
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": ["X"]} for _ in job["static_configs"]]
    targets = [
        t
        for job in yaml.safe_load((INFRA / "kubernetes" / "prometheus.yml").read_text())["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    ]
    assert "watchkeeper:8765" in targets and services["watchkeeper"] == 8765
    am = yaml.safe_load((INFRA / "kubernetes" / "prometheus.yml").read_text())["alerting"]["alertmanagers"]
    assert am[0]["static_configs"][0]["targets"] == [f"alertmanager:{services['alertmanager']}"]
    for config in (shipped, cluster):
        config["alerting"] = None
    assert shipped == cluster


def test_kubernetes_alertmanager_config_is_the_shipped_one_with_the_service_webhook() -> None:
    shipped = yaml.safe_load((INFRA / "alertmanager" / "alertmanager.yml").read_text())
    cluster = yaml.safe_load((INFRA / "kubernetes" / "alertmanager.yml").read_text())
    webhooks = [r for r in cluster["receivers"] if r["name"] == "watchkeeper"][0]["webhook_configs"]
    assert webhooks[0]["url"] == "http://watchkeeper:8765/v1/alertmanager"
    for config in (shipped, cluster):
        [r for r in config["receivers"] if r["name"] == "watchkeeper"][0]["webhook_configs"][0]["url"] = "X"
    assert shipped == cluster


def test_mounted_paths_match_what_the_configs_expect() -> None:
    provider = yaml.safe_load(
        (INFRA / "grafana" / "provisioning" / "dashboards" / "watchkeeper.yml").read_text()
    )
    dashboards_path = provider["providers"][0]["options"]["path"]
    grafana = containers()["grafana"]
    assert dashboards_path in {m["mountPath"] for m in grafana["volumeMounts"]}
    assert any(v.endswith(f":{dashboards_path}:ro") for v in compose()["grafana"]["volumes"])
    prometheus = containers()["prometheus"]
    assert "/etc/prometheus/rules" in {m["mountPath"] for m in prometheus["volumeMounts"]}
    rules = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    assert rules == ["rules/*.yml"]  # relative to /etc/prometheus in both
    assert any(
        v.startswith("./prometheus/rules:/etc/prometheus/rules") for v in compose()["prometheus"]["volumes"]
    )


def test_generated_config_maps_name_existing_files_and_no_secret_is_inline() -> None:
    kustomization = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    for generator in kustomization["configMapGenerator"]:
        for entry in generator["files"]:
            assert (INFRA / entry.split("=", 1)[-1]).is_file(), entry
    for container in containers().values():
        for variable in container.get("env", []):
            if re.search(r"PASSWORD|TOKEN|DATABASE_URL", variable["name"]):
                assert "valueFrom" in variable, variable["name"]
    for service in compose().values():
        for name, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD$|TOKEN$", name):
                assert str(value).startswith("${"), name  # from the environment of whoever runs compose
