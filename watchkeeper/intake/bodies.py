"""Request bodies as JSON values every part of Watchkeeper can store and export, or a clear refusal.

Python's `json` accepts more than the store and `/metrics` can keep: `NaN`, `Infinity` and `1e999`
(stored as a score, they poison every later scrape), integers of any size (a 64-bit column
overflows), strings with lone UTF-16 surrogates or NUL (PostgreSQL refuses them, so a retry would
fail forever), and nesting deep enough to exhaust the interpreter's stack. Everything here is
refused with the path of the offending value, so the answer is a 4xx that names the field, never a
5xx that makes a sender retry a body that can never be stored.

Bodies are UTF-8 JSON (RFC 8259). `Content-Encoding: gzip` is accepted, decompressed up to the same
size limit as a plain body; other encodings are refused (415).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, AwareDatetime, BeforeValidator

from watchkeeper.times import as_utc

# Deeper than any record, alert or feature map Watchkeeper takes; bounds the work of every walk.
MAX_DEPTH = 32
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)
# The escapes through which JSON text can carry NUL or a UTF-16 surrogate.
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|d[89a-f])", re.IGNORECASE)
# Timestamps Watchkeeper takes: after the Unix epoch, before 2200. Outside that range a time is a
# bug in the sender (and near year 1 or 9999, converting it to UTC overflows).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class BodyError(Exception):
    """A body refused as a whole: `status` is the HTTP status, `field` the path of the value."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.field, self.status = message, field, status

    def as_detail(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


def decoded_text(body: bytes, content_encoding: str | None, limit: int) -> str:
    """The body as text: gunzipped when it says so (at most `limit` bytes), then strictly UTF-8."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        body = _gunzip(body, limit)
    elif encoding != "identity":
        raise BodyError(f"unsupported Content-Encoding {encoding!r}: expected gzip or none", status=415)
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BodyError(
            f"the body is not UTF-8 text (invalid byte at offset {exc.start}): send UTF-8 JSON"
            + ("; a gzip body needs Content-Encoding: gzip" if body[:2] == b"\x1f\x8b" else ""),
            status=400,
        ) from exc


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BodyError(f"the body is not valid gzip: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyError(f"the body is larger than {limit} bytes once decompressed", status=413)
    return out


def parse_json(text: str) -> Any:
    """One JSON document, not yet checked (`check_value` names the offending path)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise BodyError("JSON nested too deeply") from exc
    except ValueError as exc:  # an integer of thousands of digits
        raise BodyError(f"not valid JSON: {exc}") from exc


# Bytes to `0` for a digit and to a space otherwise: a run of 19 digits is the only way a JSON
# text can write an integer outside 64 bits (or one past what orjson keeps an integer).
_DIGITS_AS_ZEROS = bytes(ord("0") if chr(i) in "0123456789" else ord(" ") for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19
# Container types as a tuple: `dict | list` written in a check builds the union at each call.
CONTAINERS = (dict, list)


def parse_plain(text: str) -> Any | None:
    """The JSON document when nothing in it but its nesting can be what `check_value` refuses
    (`too_deep` checks that), parsed by orjson (about 2.5 times as fast as `json`); None when the
    text needs `parse_json` and `check_value`, which name the offending path. orjson itself refuses
    NaN, Infinity, 1e999 and lone surrogates; integers of 19 digits or more, and NUL, are looked for
    here in the text, at the speed of a byte copy."""
    if "\\u0000" in text:
        return None
    if _LONG_DIGIT_RUN in text.encode().translate(_DIGITS_AS_ZEROS):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def too_deep(value: Any) -> bool:
    """Whether anything under `value` sits deeper than MAX_DEPTH (as `check_value` counts depth):
    a walk of the containers only."""
    stack: list[tuple[Any, int]] = [(value, 0)] if type(value) in CONTAINERS else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item
        if depth >= MAX_DEPTH and children:
            return True
        stack.extend((child, depth + 1) for child in children if type(child) in CONTAINERS)
    return False


def text_needs_checks(text: str) -> bool:
    """Whether a JSON text's strings can hold NUL or a lone surrogate: only through a \\u escape,
    or as raw characters outside ASCII (a strictly decoded body never has raw ones)."""
    return not text.isascii() or _RISKY_ESCAPE.search(text) is not None


def check_value(value: Any, where: str = "", check_text: bool = True) -> None:
    """Refuse, naming the first offending path, what the store or `/metrics` cannot keep: nesting
    deeper than MAX_DEPTH, non-finite numbers, integers outside 64 bits, and strings (values or
    keys) holding NUL or lone surrogates. `check_text=False` skips the strings (see
    `text_needs_checks`). A value with no problem takes one quick pass; the path is found only for
    a value that has one."""
    if not _has_problem(value, check_text):
        return
    for path, item, depth in _walk(value, where):
        if depth > MAX_DEPTH:
            raise BodyError(f"nested deeper than {MAX_DEPTH} levels", path or None)
        if isinstance(item, float) and not math.isfinite(item):
            raise BodyError("expected a finite number (not NaN, Infinity or 1e999)", path or None)
        if isinstance(item, int) and not isinstance(item, bool) and not MIN_INT <= item <= MAX_INT:
            raise BodyError("expected an integer within 64 bits", path or None)
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise BodyError(problem, path or None)


def _has_problem(value: Any, check_text: bool) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                return True
        elif kind is int:
            if not MIN_INT <= item <= MAX_INT:
                return True
        elif kind is str:
            if check_text and text_problem(item):
                return True
        elif kind is dict:
            for key, child in item.items():
                if check_text and text_problem(key):
                    return True
                stack.append((child, depth + 1))
        elif kind is list:
            stack.extend((child, depth + 1) for child in item)
        elif kind is not bool and item is not None:
            return True  # not a JSON value: let the full walk judge it
    return False


def text_problem(text: str) -> str | None:
    """Why a string cannot be stored (NUL, or a lone UTF-16 surrogate), or None."""
    if "\x00" in text:
        return "text may not contain NUL (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text may not contain a lone UTF-16 surrogate"
    return None


def printable(text: str) -> str:
    """The text with what cannot be sent back as UTF-8 (lone surrogates, NUL) escaped."""
    return text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")


def _walk(value: Any, where: str) -> Iterator[tuple[str, Any, int]]:
    """Every value and key under `value` with its path and depth, iteratively (no recursion)."""
    stack: list[tuple[str, Any, int]] = [(where, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        yield path, item, depth
        if depth > MAX_DEPTH:
            return
        if isinstance(item, dict):
            for key, child in item.items():
                shown = printable(key)
                child_path = f"{path}.{shown}" if path else shown
                yield child_path, key, depth + 1
                stack.append((child_path, child, depth + 1))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))


def _in_range(moment: datetime) -> datetime:
    if not EARLIEST <= moment < LATEST:
        raise ValueError(f"expected a time from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} (UTC)")
    return moment


def utc_in_range(moment: datetime) -> datetime:
    try:
        return _in_range(as_utc(moment))
    except OverflowError as exc:
        raise ValueError("the time cannot be converted to UTC (year 1 or 9999 with an offset)") from exc


_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def iso_time(value: Any) -> Any:
    """Only what the schema's `date-time` says: pydantic alone would also take `"0"` or `1700000000`
    as seconds since the epoch, a sender's bug that would count its records in 1970."""
    if isinstance(value, datetime) or (isinstance(value, str) and _ISO_TIME.match(value)):
        return value
    raise ValueError("expected an ISO 8601 date and time with a zone, such as 2026-11-26T09:00:00Z")


# A timestamp with a zone, converted to UTC, within [EARLIEST, LATEST).
Timestamp = Annotated[AwareDatetime, BeforeValidator(iso_time), AfterValidator(utc_in_range)]
