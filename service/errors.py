"""The HTTP error model: every error is JSON ``{"error": {"code": "...", "message": "..."}}``.

Packages below `service` raise plain exceptions (`store.errors.NotFound`, `Conflict`, ...); only
this module turns them into status codes. A database that cannot be reached (or a lock that
cannot be had) and an embedding model that cannot be loaded answer 503, which a client may retry.
Anything else is a bug: the catch-all handler logs the traceback and answers a JSON 500 that
names no internals.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import IntegrityError, OperationalError
from werkzeug.exceptions import HTTPException

from indexer.errors import EmbedderUnavailable
from store.errors import Conflict, NotFound

log = logging.getLogger(__name__)

#: Stable machine-readable codes for the HTTP errors the API answers.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error the API answers on purpose: status, code, message and optional details."""

    status = 400
    code = "bad_request"
    headers: dict[str, str] = {}

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.details = details


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class InvalidJson(ApiError):
    status, code = 400, "invalid_json"


class RequestTimeout(ApiError):
    status, code = 408, "request_timeout"


class ApiNotFound(ApiError):
    status, code = 404, "not_found"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ValidationError(ApiError):
    status, code = 422, "validation_error"


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON of every error answer, ``{"error": {"code", "message", "details"?}}`` (also
    written outside Flask, `service.client_timeout.write_json_error`)."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> Response:
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = HTTP_CODES.get(status, (exc.name or "error").lower().replace(" ", "_"))
        response = error_response(status, code, exc.description or exc.name or "error")
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        if status >= 500:
            log.error("http error status=%d endpoint=%s", status, _endpoint())
        return response

    @app.errorhandler(NotFound)
    def _not_found(exc: NotFound) -> Response:
        return error_response(404, "not_found", str(exc))

    @app.errorhandler(Conflict)
    def _conflict(exc: Conflict) -> Response:
        return error_response(409, "conflict", str(exc))

    @app.errorhandler(IntegrityError)
    def _integrity(exc: IntegrityError) -> Response:
        # Two writers raced to create the same row (e.g. one new item id in two workers).
        log.warning("write conflict endpoint=%s", _endpoint())
        return error_response(409, "conflict", "a concurrent write conflicted; retry the request")

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError) -> Response:
        # Connection refused, server gone, lock wait exhausted: the client may retry.
        log.error(
            "database unavailable method=%s endpoint=%s error=%s",
            request.method,
            _endpoint(),
            type(getattr(exc, "orig", exc)).__name__,
        )
        response = error_response(503, "unavailable", "database unavailable, retry later")
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(EmbedderUnavailable)
    def _embedder_unavailable(exc: EmbedderUnavailable) -> Response:
        log.error("embedder unavailable endpoint=%s error=%s", _endpoint(), exc)
        return error_response(503, "unavailable", "embedding model unavailable")

    @app.errorhandler(Exception)
    def _unhandled(exc: Exception) -> Response:
        log.exception(
            "unhandled error method=%s endpoint=%s error=%s",
            request.method,
            _endpoint(),
            type(exc).__name__,
        )
        return error_response(500, "internal_error", "internal server error")


def _endpoint() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "<unmatched>"
