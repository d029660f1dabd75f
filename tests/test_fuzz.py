"""Fuzzing: Hypothesis on the body parsers, Schemathesis on every operation of the OpenAPI document.

Schemathesis draws bodies, queries and path parameters from the service's own OpenAPI document
(the raw-body endpoints document theirs, see `watchkeeper/service/openapi.py`), valid and invalid,
sends them over loopback HTTP with the credentials set, and checks each answer: never a 5xx, a
documented status, content type and body. A bounded number of cases per operation and mode keeps
it within `make test`, and the seed is fixed so that a failure reproduces.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import LiveService
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.intake.bodies import MAX_DEPTH, BodyError, check_value, decoded_text, parse_json
from watchkeeper.intake.records import BatchError, PredictionRecord, parse_batch
from watchkeeper.store import Store
from watchkeeper.store.alerts import NotificationRefused, parse_notification

TOKEN = "fuzz-t0ken"
CASES = 25
QUICK = settings(
    max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@QUICK
@given(body=st.binary(max_size=300), encoding=st.sampled_from([None, "gzip", "identity", "br"]))
def test_decoding_any_bytes_gives_text_or_a_4xx(body: bytes, encoding: str | None) -> None:
    try:
        decoded_text(body, encoding, limit=10_000)
    except BodyError as exc:
        assert 400 <= exc.status < 500 and exc.message


@QUICK
@given(value=json_values)
def test_a_checked_value_is_one_the_store_and_metrics_can_keep(value: Any) -> None:
    """Whatever `check_value` lets through serialises as strict UTF-8 JSON without NUL, with finite
    numbers and 64-bit integers; what it refuses names a path."""
    try:
        check_value(value)
    except BodyError as exc:
        assert exc.status == 400 and exc.message
        return
    text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    assert "\\u0000" not in text
    text.encode("utf-8")
    assert parse_json(text) == value or _has_nan(value)


def _has_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


@QUICK
@given(text=st.text(max_size=300) | json_values.map(json.dumps))
def test_a_batch_parses_or_is_refused_with_a_reason(text: str, example_config: WatchkeeperConfig) -> None:
    try:
        parse_batch(text, None, PredictionRecord, example_config, 100)
    except BatchError as exc:
        assert exc.message


@QUICK
@given(
    payload=json_values | st.fixed_dictionaries({"version": st.just("4"), "alerts": st.lists(json_values)})
)
def test_a_notification_parses_or_is_refused_with_a_reason(payload: Any) -> None:
    try:
        notification, kept, rejected = parse_notification(payload)
    except NotificationRefused as exc:
        assert exc.message
        return
    assert len(notification.alerts) == len(kept["alerts"]) >= 1
    check_value(kept)


def test_nesting_is_refused_at_the_documented_depth() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = {"a": deep}
    with pytest.raises(BodyError, match="nested deeper"):
        check_value(deep)
    check_value(deep["a"])


# Alertmanager drops a notification answered 4xx, so the webhook stores a notification's valid
# alerts beside malformed ones (listed in `rejected`): a body with one broken alert is taken on
# purpose, which Schemathesis's negative-data check would call a failure.
PARTIAL_ACCEPTANCE = {("POST", "/v1/alertmanager")}


@pytest.fixture
def fuzzed(example_config: WatchkeeperConfig, store: Store) -> Any:
    from watchkeeper.settings import Credentials

    with LiveService(example_config, store, credentials=Credentials.shared(TOKEN)) as live:
        yield live


def test_no_operation_answers_a_5xx_or_off_its_schema(fuzzed: LiveService) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    statuses: dict[tuple[str, str], set[int]] = defaultdict(set)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13
    for operation in operations:
        key = (operation.method.upper(), operation.path)
        checks = [not_a_5xx, status_code_conformance, content_type_conformance, response_schema_conformance]
        if key not in PARTIAL_ACCEPTANCE:
            checks.append(negative_data_rejection)
        strategies = [
            (GenerationMode.POSITIVE, operation.as_strategy(generation_mode=GenerationMode.POSITIVE)),
            (GenerationMode.NEGATIVE, operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)),
            *((GenerationMode.POSITIVE, s) for s in schema.get_strategies_from_examples(operation)),
        ]
        for mode, strategy in strategies:
            _fuzz(strategy, mode, checks, fuzzed.url, statuses[key])
    writes = (
        "/v1/predictions",
        "/v1/feedback",
        "/v1/pipeline-runs",
        "/v1/feature-lookups",
        "/v1/alertmanager",
    )
    for write in writes:
        seen = statuses[("POST", write)]
        assert 200 in seen and any(400 <= code < 500 for code in seen), (write, seen)


def not_a_5xx(ctx: Any, response: Any, case: Any) -> bool:
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    return True


def _fuzz(strategy: Any, mode: GenerationMode, checks: list, url: str, statuses: set[int]) -> None:
    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        statuses.add(response.status_code)
        case.validate_response(response, checks=checks)

    try:
        run()
    except Unsatisfiable:
        # Nothing about the operation can be invalid (no parameters, no body): nothing to send.
        assert mode is GenerationMode.NEGATIVE
