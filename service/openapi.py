"""The OpenAPI 3.1 document of the HTTP API, served at ``/openapi.json``, and ``/docs``.

Nothing here restates a field: the document is assembled from the endpoints' declarations
(`service.contract.operation`) and their pydantic models, the same ones that validate the
requests, with the settings-bound limits (``DRIFTREC_MAX_K``, ``DRIFTREC_MAX_BATCH_SIZE``) of
the running app filled in. This module adds what is not a schema: the error responses, scopes
and security schemes. tests/service/test_api_schema.py runs schemathesis against the real app
with the document. ``/docs`` renders the document as one HTML page (`service.docs_page`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, url_for

from service import docs_page
from service.api.common import get_runtime
from service.auth import ENDPOINT_SCOPES, OPEN_ENDPOINTS
from service.contract import (
    Operation,
    components,
    operation,
    operations,
    path_parameter,
    query_parameters,
    ref,
)
from service.schemas import Document, Error
from store.settings import Settings

bp = Blueprint("docs", __name__)

JSON = "application/json"
DOCUMENT_KEY = "driftrec.openapi"

ERRORS = {
    "400": "Body is not valid JSON (`invalid_json`), or malformed or cut short (`bad_request`)",
    "401": "Missing, invalid or revoked API key (`unauthorized`)",
    "403": "The key lacks the scope this endpoint needs (`forbidden`)",
    "404": "Unknown id or route (`not_found`)",
    "405": "Method not allowed on this path (`method_not_allowed`)",
    "408": "The client stopped sending the body (`request_timeout`)",
    "409": "A concurrent write conflicted; retry (`conflict`)",
    "413": "Body or batch over the limit (`payload_too_large`)",
    "415": "Body is not `application/json` (`unsupported_media_type`)",
    "422": "Fields with wrong types or values (`validation_error`)",
    "503": "Database or embedding model unavailable; retry (`unavailable`)",
}
READ_ERRORS = ("401", "403", "404", "405", "422", "503")
BODY_ERRORS = ("400", "401", "403", "404", "405", "408", "409", "413", "415", "422", "503")


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _operation(endpoint: str, spec: Operation, settings: Settings) -> dict[str, Any]:
    if spec.text_response is not None:
        media, schema = spec.text_response
        ok = {"description": spec.response_description, "content": {media: {"schema": schema}}}
    elif spec.response is not None:
        ok = _json(ref(spec.response), spec.response_description)
    else:
        ok = {"description": "Done"}
    responses: dict[str, Any] = {str(spec.status): ok}
    for status, (model, description) in spec.responses.items():
        responses[str(status)] = _json(ref(model), description)
    result: dict[str, Any] = {"operationId": endpoint.replace(".", "_"), "summary": spec.summary}
    if endpoint in OPEN_ENDPOINTS:
        result["security"] = []
    else:
        scope = ENDPOINT_SCOPES[endpoint]
        result["description"] = f"Needs an API key with the `{scope}` scope (`admin` implies all)."
        result["x-scope"] = scope
        codes = BODY_ERRORS if spec.body is not None else READ_ERRORS
        responses.update({code: {"$ref": f"#/components/responses/E{code}"} for code in codes})
    result["responses"] = responses
    if spec.query is not None:
        result["parameters"] = query_parameters(spec.query, settings)
    if spec.body is not None:
        result["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(spec.body)}}}
    return result


def build_spec(app: Flask, settings: Settings, *, server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for this app's declared endpoints under these settings."""
    paths: dict[str, Any] = {}
    models: list[Any] = [Error]
    for path, method, endpoint, spec in operations(app):
        item = paths.setdefault(path, {})
        names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        if names:
            item["parameters"] = [
                path_parameter(name, spec.path.get(name, f"The {name}")) for name in names
            ]
        item[method] = _operation(endpoint, spec, settings)
        declared = [spec.body, spec.response, *(model for model, _ in spec.responses.values())]
        models += [model for model in declared if model is not None]
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "driftrec",
            "version": _version(),
            "description": (
                "Recommendations whose user interest vectors move with every event. Errors are "
                '`{"error": {"code", "message", "details"?}}`; a 5xx is always a bug, except 503 '
                "(retry later)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components(models, settings),
            "responses": {
                f"E{code}": _json(ref(Error), description) for code, description in ERRORS.items()
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `driftrec keys create`",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}] if settings.auth_enabled else [],
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("driftrec")
    except PackageNotFoundError:
        return "0.0.0"


def app_document() -> dict[str, Any]:
    """This app's document, built on first use: the routes and settings are fixed by then."""
    document = current_app.extensions.get(DOCUMENT_KEY)
    if document is None:
        document = current_app.extensions[DOCUMENT_KEY] = build_spec(
            current_app, get_runtime().settings
        )
    return document


@bp.get("/openapi.json")
@operation("This document", response=Document, response_description="OpenAPI 3.1")
def spec() -> dict[str, Any]:
    return app_document()


@bp.get("/docs")
def page() -> str:
    return docs_page.render(app_document(), url_for("docs.spec"))
