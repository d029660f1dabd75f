"""infra/compose.yaml and infra/kubernetes agree with each other and with the configs they ship."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from watchkeeper.local.ha import render_ha_prometheus_config
from watchkeeper.local.stack import INFRA, Ports

COMPONENTS = ("postgres", "prefect-server", "watchkeeper", "prometheus", "alertmanager", "grafana")
DEFAULT_PORTS = {
    "prefect-server": Ports().prefect,
    "watchkeeper": Ports().service,
    "prometheus": Ports().prometheus,
    "alertmanager": Ports().alertmanager,
    "grafana": 3000,
    "postgres": 5432,
    "redis": 6379,
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
        if name != "prefect-server":  # in Kubernetes, Prefect's own Helm chart runs it
            assert services[name]["image"] == pods[name]["image"], name
    image = prefect_values()["global"]["prefect"]["image"]
    assert services["prefect-server"]["image"] == f"{image['repository']}:{image['prefectTag']}"


def prefect_values() -> dict:
    return yaml.safe_load((INFRA / "kubernetes" / "prefect-server-values.yaml").read_text())


def test_prefect_runs_as_api_replicas_and_one_services_process_on_redis() -> None:
    values = prefect_values()
    assert values["server"]["replicaCount"] >= 2
    assert values["backgroundServices"]["runAsSeparateDeployment"] is True
    assert values["backgroundServices"]["messaging"]["redis"]["host"] == "redis"
    assert values["migrations"]["enabled"] is True  # once, as a Job, never on every start
    assert values["postgresql"]["enabled"] is False and values["secret"]["create"] is False
    assert "redis" in k8s("Service") and k8s("Deployment")["redis"]


def test_every_replicated_workload_has_a_disruption_budget() -> None:
    budgets = {b["spec"]["selector"]["matchLabels"]["app"]: b for b in k8s("PodDisruptionBudget").values()}
    for workload in [*k8s("Deployment").values(), *k8s("StatefulSet").values()]:
        if workload["spec"]["replicas"] > 1:
            app = workload["spec"]["selector"]["matchLabels"]["app"]
            assert budgets[app]["spec"]["minAvailable"] == 1, app


def test_kubernetes_services_expose_the_container_ports_on_the_shipped_defaults() -> None:
    pods = containers()
    for name, service in k8s("Service").items():
        if service["spec"].get("clusterIP") == "None":  # headless: the replicas by their own address
            continue
        [port] = service["spec"]["ports"]
        assert port["port"] == DEFAULT_PORTS[name], name
        assert port["targetPort"] in {p["containerPort"] for p in pods[name]["ports"]}, name
        assert service["spec"]["selector"] == {"app": name}


def test_compose_listens_on_loopback_at_the_shipped_default_ports() -> None:
    services = compose()
    for name in COMPONENTS:  # compose is the one-machine topology: no Redis
        port = DEFAULT_PORTS[name]
        text = yaml.safe_dump(services[name])
        assert "127.0.0.1" in text and re.search(rf"\b{port}\b", text), name
        assert services[name]["network_mode"] == "host"


def test_kubernetes_prometheus_config_is_the_ha_pair_with_service_discovery(tmp_path: Path) -> None:
    """The cluster's config is what `up --ha` renders for one of its pair, with the cluster's names
    and DNS discovery in place of loopback targets."""
    rendered = yaml.safe_load(
        render_ha_prometheus_config(
            tmp_path, "${POD_NAME}", "watchkeeper:8765", ["S"], "localhost:9090", ["A"], "N"
        ).read_text()
    )
    cluster = yaml.safe_load((INFRA / "kubernetes" / "prometheus.yml").read_text())
    services = k8s("Service")
    assert cluster["alerting"]["alertmanagers"][0]["dns_sd_configs"][0]["names"] == ["alertmanager-peers"]
    assert services["alertmanager-peers"]["spec"]["clusterIP"] == "None"
    jobs = {job["job_name"]: job for job in cluster["scrape_configs"]}
    assert jobs["watchkeeper-replicas"].pop("dns_sd_configs")[0]["names"] == ["watchkeeper-replicas"]
    assert services["watchkeeper-replicas"]["spec"]["selector"] == {"app": "watchkeeper"}
    jobs["watchkeeper-replicas"]["static_configs"] = [{"targets": ["S"]}]
    # Every node's exporter, by its address: a node's instance is its own, not the one machine's.
    assert jobs["node"].pop("dns_sd_configs")[0]["names"] == ["node-exporter"]
    assert services["node-exporter"]["spec"]["clusterIP"] == "None"
    jobs["node"]["static_configs"] = [{"targets": ["N"], "labels": {"instance": "localhost"}}]
    cluster["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": ["A"]}]}]
    rendered["rule_files"] = ["rules/*.yml"]  # relative to /etc/prometheus in the pod
    assert rendered == cluster


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
