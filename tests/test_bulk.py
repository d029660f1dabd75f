"""`insert_rows` stores what it is given, whatever the text, on both back ends: PostgreSQL's path
sends each column as one array, whose text form quotes and escapes every element."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from watchkeeper.store import Store
from watchkeeper.store.bulk import insert_rows
from watchkeeper.store.schema import Prediction, PredictionKey

# What the intake lets through: any text but NUL and lone surrogates (`check_value` refuses them).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
ROW = st.fixed_dictionaries(
    {
        "model_version": TEXT.filter(bool),
        "features": st.dictionaries(TEXT, JSON, max_size=4),
        "prediction": JSON,
        "score": st.none() | st.floats(allow_nan=False, allow_infinity=False),
        "latency_seconds": st.none() | st.floats(0, 100),
        "error": st.booleans(),
        "timestamp": st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    }
)
SEQUENCE = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=6), request_id=TEXT)
def test_rows_come_back_as_written(store: Store, rows: list[dict[str, Any]], request_id: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    model = f"m{next(SEQUENCE)}"
    written = [
        {**row, "model_name": model, "request_id": f"{request_id}{i}", "received_at": now}
        for i, row in enumerate(rows)
    ]
    with store.writing() as session:
        inserted = insert_rows(session, Prediction.__table__, written, ("model_name", "request_id"))
        again = insert_rows(session, Prediction.__table__, written[:1], ("model_name", "request_id"))
    assert inserted == {(model, row["request_id"]) for row in written}
    assert again == set()
    columns = [Prediction.__table__.c[name] for name in written[0]]
    with store.reading() as session:
        stored = [
            dict(row)
            for row in session.execute(select(*columns).where(Prediction.model_name == model)).mappings()
        ]
    assert sorted(stored, key=lambda row: row["request_id"]) == sorted(
        written, key=lambda row: row["request_id"]
    )


def test_without_a_key_every_row_is_appended_and_types_are_kept(store: Store) -> None:
    start = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    keys = [
        {
            "key": bytes([i]) * 16,
            "model_version": "v1",
            "bucket_start": start + timedelta(minutes=i),
            "predicted": None if i == 2 else "1",
            "score_bin": "0.42",
            "segments": None,
            "labelled": i == 1,
            "received_at": start,
        }
        for i in range(3)
    ]
    with store.writing() as session:
        assert insert_rows(session, PredictionKey.__table__, keys) == set()
    with store.reading() as session:
        stored = session.execute(
            select(PredictionKey.bucket_start, PredictionKey.predicted, PredictionKey.labelled).order_by(
                PredictionKey.key
            )
        ).all()
    assert [tuple(row) for row in stored] == [
        (row["bucket_start"], row["predicted"], row["labelled"]) for row in keys
    ]
