"""Request parsing helpers: JSON bodies, query parameters, items, events and timestamps.

Entry validators (`parse_item`, `parse_event`) raise `EntryError` with a message naming the field;
the endpoints collect those by index. Request-level problems raise the `service.errors` types
(400 invalid JSON, 413 oversized batch, 415 non-JSON body, 422 wrong types or values).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import request

from interest.ingest import EventInput
from service.errors import InvalidJson, PayloadTooLarge, UnsupportedMediaType, ValidationError
from store.items import ItemInput
from store.models import EXTERNAL_ID_LENGTH

#: Events may be stamped at most this far ahead of the server clock (clock skew allowance).
MAX_FUTURE_S = 86_400.0
#: Bound on an event's value: it scales the event weight, and profiles must stay finite.
MAX_EVENT_VALUE = 1e6
MAX_EVENT_TYPE_LENGTH = 64
MAX_QUERY_LENGTH = 1_000

ITEM_FIELDS = {"id", "title", "text", "categories", "properties", "available", "expires_at"}
EVENT_FIELDS = {"id", "user_id", "item_id", "type", "value", "timestamp", "recomm_id"}
MAX_RECOMM_ID_LENGTH = 64


class EntryError(ValueError):
    """One batch entry is invalid; the message names the field."""


# -- bodies ----------------------------------------------------------------------------------
def json_body() -> dict[str, Any]:
    """The request's JSON object: 415 unless the body is declared JSON, 400 when it won't parse.

    Python's parser accepts the non-standard ``NaN``/``Infinity`` tokens; numbers are checked
    for finiteness where they are used, so such an entry is reported like any other bad value.
    """
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"expected a JSON body (Content-Type: application/json), got {mimetype or 'none'!r}"
        )
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidJson(f"request body is not valid JSON: {_short(exc)}") from exc
    if not isinstance(body, dict):
        raise ValidationError(f"request body must be a JSON object, got {_type_name(body)}")
    return body


def batch(body: Mapping[str, Any], key: str, max_size: int) -> list[Any]:
    """``body[key]`` as a list of at most ``max_size`` entries."""
    if key not in body:
        raise ValidationError(f"missing field {key!r}")
    entries = body[key]
    if not isinstance(entries, list):
        raise ValidationError(f"{key!r} must be a list, got {_type_name(entries)}")
    if len(entries) > max_size:
        raise PayloadTooLarge(
            f"{len(entries)} {key} in one request; the limit is {max_size} "
            "(DRIFTREC_MAX_BATCH_SIZE)"
        )
    return entries


# -- query parameters ------------------------------------------------------------------------
def parse_k(raw: object, max_k: int, *, default: int = 10, from_query: bool = True) -> int:
    """``k`` from a query string (text) or a JSON body (a JSON integer): 1..max_k."""
    if raw is None:
        return default
    if isinstance(raw, str) and from_query:
        text = raw.strip()
        if not text.lstrip("+-").isdigit() or len(text) > 12:
            raise ValidationError(f"k must be an integer between 1 and {max_k}, got {raw!r}")
        value = int(text)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        raise ValidationError(f"k must be an integer between 1 and {max_k}, got {_type_name(raw)}")
    if not 1 <= value <= max_k:
        raise ValidationError(f"k must be between 1 and {max_k}, got {value}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_flag(raw: str | None, name: str, *, default: bool) -> bool:
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValidationError(f"{name} must be true or false, got {raw!r}")


def categories_param(values: list[str]) -> list[str]:
    """``category`` may repeat and each may be comma-separated; blanks are dropped."""
    found: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in found:
                found.append(part)
    return found


def path_id(raw: str, what: str) -> str:
    """An id taken from the URL, held to the same rules as ids in bodies."""
    _check_raw_path(what)
    if len(raw) > EXTERNAL_ID_LENGTH:
        raise ValidationError(f"{what} id is longer than {EXTERNAL_ID_LENGTH} characters")
    try:
        _storable(raw, f"{what} id")
    except EntryError as exc:
        raise ValidationError(str(exc)) from exc
    return raw


def _check_raw_path(what: str) -> None:
    """Werkzeug decodes percent-escapes with replacement characters; refuse invalid UTF-8."""
    environ = request.environ
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    try:
        if uri:
            unquote_to_bytes(uri.split("?", 1)[0]).decode("utf-8")
        environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    except UnicodeError as exc:  # invalid UTF-8, or characters that were never bytes
        raise ValidationError(f"{what} id in the URL is not valid UTF-8") from exc


def parse_query(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValidationError(f"query must be a string, got {_type_name(raw)}")
    if not raw.strip():
        raise ValidationError("query must not be empty")
    if len(raw) > MAX_QUERY_LENGTH:
        raise ValidationError(f"query is longer than {MAX_QUERY_LENGTH} characters")
    return _valid_text(raw, "query")


def string_list(raw: object, name: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise ValidationError(f"{name} must be a list of strings")
    return [_valid_text(value, name) for value in raw]


def _valid_text(value: str, name: str) -> str:
    try:
        return _storable(value, name)
    except EntryError as exc:
        raise ValidationError(str(exc)) from exc


# -- entries ---------------------------------------------------------------------------------
def parse_item(entry: object) -> ItemInput:
    """One entry of ``PUT /v1/items``."""
    data = _object(entry, ITEM_FIELDS)
    text = data.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise EntryError(f"text must be a string or null, got {_type_name(text)}")
        _storable(text, "text")
    categories = data.get("categories")
    if categories is None:
        categories = []
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise EntryError("categories must be a list of strings")
    for category in categories:
        _storable(category, "categories")
    properties = data.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise EntryError(f"properties must be an object, got {_type_name(properties)}")
    _check_json(properties, "properties", 0)
    available = data.get("available", True)
    if not isinstance(available, bool):
        raise EntryError(f"available must be true or false, got {_type_name(available)}")
    expires = data.get("expires_at")
    return ItemInput(
        external_id=_id(data, "id"),
        title=_text(data, "title"),
        text=text,
        categories=categories,
        properties=properties,
        available=available,
        expires_at=None if expires is None else parse_timestamp(expires, "expires_at"),
    )


def parse_event(entry: object, *, now: float | None = None) -> EventInput:
    """One entry of ``POST /v1/events``. Unknown items and event types are left to ingest."""
    data = _object(entry, EVENT_FIELDS)
    event_type = _text(data, "type")
    if len(event_type) > MAX_EVENT_TYPE_LENGTH:
        raise EntryError(f"type is longer than {MAX_EVENT_TYPE_LENGTH} characters")
    value = data.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EntryError(f"value must be a number or null, got {_type_name(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise EntryError("value must be a finite number")
        if abs(value) > MAX_EVENT_VALUE:
            raise EntryError(f"value must be within ±{MAX_EVENT_VALUE:g}")
    if "timestamp" not in data or data["timestamp"] is None:
        raise EntryError("missing field 'timestamp'")
    timestamp = parse_timestamp(data["timestamp"], "timestamp")
    now = time.time() if now is None else now
    if timestamp.timestamp() > now + MAX_FUTURE_S:
        raise EntryError("timestamp is more than one day in the future")
    recomm_id = data.get("recomm_id")
    if recomm_id is not None:
        recomm_id = _text(data, "recomm_id")
        if len(recomm_id) > MAX_RECOMM_ID_LENGTH:
            raise EntryError(f"recomm_id is longer than {MAX_RECOMM_ID_LENGTH} characters")
    return EventInput(
        event_id=_id(data, "id"),
        user_id=_id(data, "user_id"),
        item_id=_id(data, "item_id"),
        type=event_type,
        timestamp=timestamp,
        value=value,
        recomm_id=recomm_id,
    )


def parse_timestamp(raw: object, name: str) -> datetime:
    """ISO 8601 (a time without a zone is taken as UTC) or epoch seconds -> aware UTC datetime."""
    if isinstance(raw, bool):
        raise EntryError(f"{name} must be an ISO 8601 string or epoch seconds, got a boolean")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise EntryError(f"{name} must be a finite number of epoch seconds")
        try:
            return datetime.fromtimestamp(raw, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise EntryError(f"{name} is out of range: {raw!r}") from exc
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError as exc:
            raise EntryError(f"{name} is not an ISO 8601 timestamp: {raw[:64]!r}") from exc
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC)
        except (OverflowError, ValueError) as exc:
            raise EntryError(f"{name} is out of range: {raw[:64]!r}") from exc
    raise EntryError(f"{name} must be an ISO 8601 string or epoch seconds, got {_type_name(raw)}")


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``, as every timestamp in a response."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- helpers ---------------------------------------------------------------------------------
def _object(entry: object, fields: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise EntryError(f"entry must be an object, got {_type_name(entry)}")
    unknown = sorted(set(entry) - fields)
    if unknown:
        raise EntryError(f"unknown field {unknown[0]!r}")
    return entry


def _id(data: Mapping[str, Any], name: str) -> str:
    value = _text(data, name)
    if len(value) > EXTERNAL_ID_LENGTH:
        raise EntryError(f"{name} is longer than {EXTERNAL_ID_LENGTH} characters")
    return value


def _text(data: Mapping[str, Any], name: str) -> str:
    if name not in data or data[name] is None:
        raise EntryError(f"missing field {name!r}")
    value = data[name]
    if not isinstance(value, str):
        raise EntryError(f"{name} must be a string, got {_type_name(value)}")
    if not value.strip():
        raise EntryError(f"{name} must not be empty")
    return _storable(value, name)


def _storable(value: str, name: str) -> str:
    """Text every database can store: no NUL characters, no lone surrogates."""
    if "\x00" in value:
        raise EntryError(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EntryError(f"{name} is not valid Unicode text") from exc
    return value


MAX_JSON_DEPTH = 32


def _check_json(value: object, name: str, depth: int) -> None:
    """Properties must be plain JSON that PostgreSQL accepts: finite numbers, clean strings."""
    if depth > MAX_JSON_DEPTH:
        raise EntryError(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _storable(value, name)
    elif isinstance(value, float) and not math.isfinite(value):
        raise EntryError(f"{name} must not contain NaN or infinite numbers")
    elif isinstance(value, dict):
        for key, inner in value.items():
            _storable(key, name)
            _check_json(inner, name, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            _check_json(inner, name, depth + 1)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
