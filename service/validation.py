"""Request plumbing beneath the declared contract: the JSON body, the raw URL, timestamps out.

What a body or a query must hold is declared once, as pydantic models (`service.schemas`,
`service.recommend_params`), and checked by `service.contract`. This module only gets the body
to them: 415 unless it is declared JSON, 400 when it will not parse (as JSON, or as HTTP: a
malformed chunked body), 413 past ``MAX_CONTENT_LENGTH`` (chunked bodies included), 408 when the
client stalled while sending it; and refuses URLs (path or query string) whose percent-escapes
are not UTF-8.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from service.client_timeout import stalled
from service.errors import (
    BadRequest,
    InvalidJson,
    RequestTimeout,
    UnsupportedMediaType,
    ValidationError,
)


def json_body() -> Any:
    """The request's parsed JSON (any value; the model says it must be an object).

    Python's parser accepts the non-standard ``NaN``/``Infinity`` tokens; the models refuse
    non-finite numbers field by field, so such an entry is reported like any other bad value.
    """
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"expected a JSON body (Content-Type: application/json), got {mimetype or 'none'!r}"
        )
    raw = _body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidJson(f"request body is not valid JSON: {_short(exc)}") from exc


def _body() -> bytes:
    """The raw body: 413 past ``MAX_CONTENT_LENGTH`` (werkzeug checks a declared length before
    reading; a chunked body it cuts at the limit, so one more byte is asked for), 400 for a
    chunked body gunicorn cannot parse (its exceptions would otherwise reach the catch-all as a
    500), 408 when the client stalled (`service.client_timeout`), 400 when it closed early."""
    try:
        raw = request.get_data(cache=True)  # raises 413 past a declared Content-Length
        limit = request.max_content_length
        if request.content_length is None and limit is not None and len(raw) >= limit:
            try:
                more = request.environ["wsgi.input"].read(1)
            except OSError as exc:  # gunicorn's NoMoreData: the body was cut off, or stalled
                raise ClientDisconnected() from exc
            if more:
                raise RequestEntityTooLarge()
    except ParseException as exc:  # InvalidChunkSize, ChunkMissingTerminator, InvalidHeader, ...
        raise BadRequest(f"malformed request body: {_short(exc)}") from exc
    except ClientDisconnected:
        if stalled(request.environ):
            raise RequestTimeout("the client stopped sending the request body") from None
        raise
    # Werkzeug reads a body whose client went quiet or closed early as ended: check both.
    if stalled(request.environ):
        raise RequestTimeout("the client stopped sending the request body")
    if request.content_length is not None and len(raw) < request.content_length:
        raise BadRequest("the request body ended before its Content-Length")
    return raw


def check_raw_path(what: str) -> None:
    """Werkzeug decodes percent-escapes with replacement characters; refuse invalid UTF-8."""
    environ = request.environ
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    try:
        if uri:
            unquote_to_bytes(uri.split("?", 1)[0]).decode("utf-8")
        environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    except UnicodeError as exc:  # invalid UTF-8, or characters that were never bytes
        raise ValidationError(f"{what} id in the URL is not valid UTF-8") from exc


def check_raw_query() -> None:
    """As `check_raw_path`, for the query string: ``?category=%FF`` would read as U+FFFD."""
    raw = request.environ.get("QUERY_STRING", "")
    if "%" not in raw and raw.isascii():
        return
    try:
        unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except UnicodeError as exc:
        raise ValidationError("the query string in the URL is not valid UTF-8") from exc


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``, as every timestamp in a response."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
