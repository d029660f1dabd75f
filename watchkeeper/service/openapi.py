"""The service's OpenAPI document: request bodies of the endpoints that read raw bodies, and every
error answer, so clients and fuzzers (Schemathesis, in the suite) know what is taken and refused."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, TypeAdapter

REF_TEMPLATE = "#/components/schemas/{model}"


class Problem(BaseModel):
    """Every 4xx and 5xx: what is wrong (`error`) and where (`field`; `index` for a batch's record)."""

    model_config = ConfigDict(extra="allow")

    error: str
    field: str | None = None
    index: int | None = None


class MarkdownResponse(PlainTextResponse):
    media_type = "text/markdown"


WHY = {
    400: "The body is not UTF-8 JSON, or not valid JSON",
    401: "Credentials for the endpoint's role are required",
    403: "The person signed in may read but not act (a viewer)",
    404: "Not found",
    409: "Conflict with the stored state",
    413: "The body or batch is larger than the intake's limits",
    415: "Unsupported Content-Encoding (gzip or none)",
    422: "A value is refused; `field` names it",
    503: "The store is unavailable; nothing was stored; retry later",
}


PROBLEM = {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="Problem")}}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of an operation that can answer these error codes, each a JSON Problem
    (given as content, not as a model, so an operation answering markdown still errs in JSON)."""
    return {code: {"description": WHY[code], "content": PROBLEM} for code in codes}


class Components:
    """Schemas the raw-body endpoints refer to, added to the document FastAPI generates."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {"Problem": Problem.model_json_schema(ref_template=REF_TEMPLATE)}

    def body(
        self, model: Any, example: Any, enums: dict[str, list[str]] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """`openapi_extra` for an operation whose JSON body is `model` (a type pydantic knows), with an
        example that is taken; `enums` restricts the named string properties of the body's models to
        the configured values."""
        schema = TypeAdapter(model).json_schema(ref_template=REF_TEMPLATE)
        for name, definition in schema.pop("$defs", {}).items():
            for prop, values in (enums or {}).items():
                if prop in definition.get("properties", {}):
                    definition["properties"][prop]["enum"] = values
            self.schemas[name] = definition
        return {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {**schema, **extra}, "example": example}},
            }
        }

    def install(self, app: FastAPI) -> None:
        generate = app.openapi

        def openapi() -> dict[str, Any]:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(self.schemas)
            return document

        app.openapi = openapi  # type: ignore[method-assign]


EXAMPLE_TIME = "2026-11-26T09:00:00Z"


def examples(
    model: str, pipeline: str, feature_view: tuple[str, str] = ("online", "customer")
) -> dict[str, Any]:
    """A body each raw-body endpoint takes, for the configured model, pipeline and (feature store,
    view) named."""
    return {
        "predictions": [
            {
                "model_name": model,
                "model_version": "v1",
                "request_id": "r-1",
                "timestamp": EXAMPLE_TIME,
                "features": {"salary": 52000, "elevel": 2},
                "prediction": 1,
                "score": 0.91,
                "latency_seconds": 0.031,
            }
        ],
        "feedback": [{"model_name": model, "request_id": "r-1", "label": 1, "business_value": 250000}],
        "pipeline-runs": [
            {
                "pipeline_name": pipeline,
                "run_id": "run-1",
                "stage": "load",
                "started_at": EXAMPLE_TIME,
                "duration_seconds": 12.5,
                "records": 1000,
                "errors": 3,
            }
        ],
        "feature-lookups": [
            {
                "feature_store": feature_view[0],
                "feature_view": feature_view[1],
                "request_id": "r-1",
                "timestamp": EXAMPLE_TIME,
                "latency_seconds": 0.004,
                "keys": 1,
                "errors": 0,
                "materialized_at": "2026-11-26T08:58:30Z",
            }
        ],
        "alertmanager": {
            "version": "4",
            "groupKey": '{}:{alertname="ModelLatencyHigh"}',
            "status": "firing",
            "receiver": "watchkeeper",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "ModelLatencyHigh", "model_name": model, "severity": "warning"},
                    "annotations": {"summary": "p95 latency above 500 ms"},
                    "startsAt": EXAMPLE_TIME,
                    "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": "c6eadffa33fcdf37",
                }
            ],
        },
    }
