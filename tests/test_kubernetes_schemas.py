"""infra/'s Kubernetes manifests against the API's schemas, strictly: an unknown field fails.

The official client's models are generated from the Kubernetes API's OpenAPI document. Older
clients dropped an unknown field without a word; the locked one (kubernetes 37) makes each a
pydantic model that forbids extra fields, so validating a manifest through its kind's model in
strict mode (no string taken for a number) checks every field name, type and required field, at
every depth.
"""

from __future__ import annotations

from typing import Any

import kubernetes.client.models as models
import pydantic
import pytest
import yaml

from tests.test_deployment_files import manifests


def document_problems(document: dict[str, Any]) -> list[str]:
    version = document["apiVersion"].split("/")[-1]
    model = getattr(models, f"{version.capitalize()}{document['kind']}")
    try:
        model.model_validate(document, strict=True)
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


@pytest.mark.parametrize("document", manifests(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_every_manifest_is_valid_against_the_api_schema(document: dict[str, Any]) -> None:
    assert document_problems(document) == []


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ("replica: 2", "spec.replica: Extra inputs are not permitted"),
        ("replicas: '2'", "spec.replicas: Input should be a valid integer"),
        ("template: {spec: {containers: [{name: a, imagee: b}]}}", "containers.0.imagee: Extra inputs"),
        ("selector: null", "spec.selector: Input should be a valid dictionary"),
    ],
)
def test_a_wrong_field_is_refused(change: str, found: str) -> None:
    [redis] = [d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "redis"]
    broken = {**redis, "spec": {**redis["spec"], **yaml.safe_load(change)}}
    problems = document_problems(broken)
    assert any(found in problem for problem in problems), problems
