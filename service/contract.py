"""The bridge between the API's pydantic models and Flask: one declaration validates and documents.

An endpoint declares its contract with `operation`::

    @bp.post("")
    @operation("Semantic search over the catalogue", body=SearchBody, response=SearchAnswer)
    def search(body: SearchBody) -> dict[str, Any]: ...

The decorator validates the JSON body (and/or the query parameters) against the models before
the view runs and passes the validated model in; `service.openapi` builds ``/openapi.json``
from the same declarations (`spec_paths`, `components`). Pydantic's errors become the API's
422 ``validation_error`` with a message naming each field (``examples[0].weight must be a
finite number``); a batch over ``DRIFTREC_MAX_BATCH_SIZE`` becomes 413. Batch entries that are
reported one by one (events, items) are validated with `entry`, which raises `EntryError`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_origin

from flask import Flask, request
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticError
from pydantic.json_schema import models_json_schema
from pydantic_core import ErrorDetails

from service.errors import PayloadTooLarge, ValidationError
from service.fields import REF_TEMPLATE, SETTING_LIMIT_KEY, Entries, Id, shown
from service.validation import check_raw_path, check_raw_query, json_body
from store.settings import Settings

M = TypeVar("M", bound=BaseModel)
#: Errors reported in one message at most; the rest are counted.
MAX_REPORTED = 3


class EntryError(ValueError):
    """One batch entry is invalid; the message names the field."""


@dataclass(frozen=True)
class Operation:
    """What an endpoint declares: its models, its answer and the words for the document."""

    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    #: Path parameter name -> description (the schema is always an `Id`).
    path: Mapping[str, str] = field(default_factory=dict)
    #: Further answers beyond the usual errors: status -> (model, description).
    responses: Mapping[int, tuple[type[BaseModel], str]] = field(default_factory=dict)
    #: A non-JSON answer: (media type, JSON schema), e.g. Prometheus text.
    text_response: tuple[str, dict[str, Any]] | None = None
    response_description: str = "OK"


def operation(summary: str, **declared: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an endpoint's contract (see `Operation`); the view receives ``body=``/``query=``."""
    spec = Operation(summary, **declared)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def endpoint(**kwargs: Any) -> Any:
            check_raw_query()
            if spec.query is not None:
                kwargs["query"] = validate(spec.query, query_values(spec.query, request.args))
            if spec.body is not None:
                kwargs["body"] = validate(spec.body, json_body())
            return view(**kwargs)

        endpoint.operation = spec  # type: ignore[attr-defined]
        return endpoint

    return decorate


# -- validation ------------------------------------------------------------------------------
def context() -> dict[str, Any]:
    """What settings-bound limits (`service.fields.AtMost`) and clock checks read."""
    from service.api.common import get_runtime  # service.api imports this module

    settings = get_runtime().settings
    return {"max_k": settings.max_k, "max_batch_size": settings.max_batch_size, "now": time.time()}


def validate(model: type[M], data: Any, ctx: dict[str, Any] | None = None) -> M:
    """``data`` as ``model``, or a 422 naming the fields (413 for a batch over the limit)."""
    try:
        return model.model_validate(data, strict=True, context=ctx or context())
    except PydanticError as exc:
        errors = exc.errors(include_url=False)
        too_large = [e for e in errors if e["type"] == "batch_too_large"]
        if too_large:
            raise PayloadTooLarge(describe(too_large)) from None
        raise ValidationError(describe(errors, root="request body")) from None


def entry(model: type[M], data: Any, ctx: dict[str, Any]) -> M:
    """One batch entry as ``model``, or `EntryError` naming the fields."""
    try:
        return model.model_validate(data, strict=True, context=ctx)
    except PydanticError as exc:
        raise EntryError(describe(exc.errors(include_url=False), root="entry")) from None


def query_values(model: type[BaseModel], args: Any) -> dict[str, Any]:
    """The model's fields from ``request.args``: a list field takes every value given."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in args:
            continue
        values[name] = args.getlist(key) if get_origin(info.annotation) is list else args.get(key)
    return values


def path_id(raw: str, what: str) -> str:
    """An id taken from the URL, held to the same rules as ids in bodies (`service.fields.Id`)."""
    check_raw_path(what)
    try:
        return _ID.validate_python(raw, strict=True)
    except PydanticError as exc:
        raise ValidationError(describe(exc.errors(include_url=False), root=f"{what} id")) from None


_ID: TypeAdapter[str] = TypeAdapter(Id)

# What each pydantic error type says after the field name; ``{got}`` is the input's JSON type.
_MESSAGES = {
    "string_type": "must be a string, got {got}",
    "string_unicode": "is not valid Unicode text",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "must not be empty",
    "string_too_long": "is longer than {max_length} characters",
    "int_type": "must be an integer, got {got}",
    "int_parsing": "must be an integer, got {got}",
    "int_from_float": "must be an integer, got {got}",
    "float_type": "must be a number, got {got}",
    "float_parsing": "must be a number, got {got}",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false, got {got}",
    "bool_parsing": "must be true or false, got {got}",
    "list_type": "must be a list, got {got}",
    "dict_type": "must be an object, got {got}",
    "model_type": "must be an object, got {got}",
    "model_attributes_type": "must be an object, got {got}",
    "too_long": "holds {actual_length} entries; the limit is {max_length}",
    "too_short": "must hold at least {min_length} entries",
    "greater_than_equal": "must be at least {ge}, got {input}",
    "less_than_equal": "must be at most {le}, got {input}",
    "literal_error": "must be one of {expected}, got {input}",
}


def describe(errors: Iterable[ErrorDetails], *, root: str = "request body") -> str:
    """One line for pydantic's errors: ``field message; field message (and N more)``."""
    errors = list(errors)
    lines = [_message(error, root) for error in errors[:MAX_REPORTED]]
    if len(errors) > MAX_REPORTED:
        lines.append(f"(and {len(errors) - MAX_REPORTED} more)")
    return "; ".join(lines)


def _message(error: ErrorDetails, root: str) -> str:
    kind, loc = error["type"], error["loc"]
    name = _field(loc)
    if kind == "missing":
        return f"missing field {name!r}"
    if kind == "extra_forbidden":
        parent = _field(loc[:-1])
        return f"unknown {parent + ' ' if parent else ''}field {loc[-1]!r}"
    template = _MESSAGES.get(kind)
    given = error.get("input")
    if kind == "float_type" and isinstance(given, int) and not isinstance(given, bool):
        template = "is out of range: {input} is beyond the range of a float (~1.8e308)"
    if kind == "too_short" and (error.get("ctx") or {}).get("min_length") == 1:
        template = "must not be empty"
    if template is not None:
        ctx = dict(error.get("ctx") or {})
        try:
            text = template.format(
                **ctx,
                got=_type_name(given),
                input=repr(given[:64]) if isinstance(given, str) else shown(given),
            )
        except (KeyError, IndexError):  # a context this template did not expect
            text = error["msg"]
    else:  # our own PydanticCustomError messages read after the field name
        text = error["msg"]
    return f"{name or root} {text}"


def _field(loc: tuple[int | str, ...]) -> str:
    """``("examples", 0, "text")`` -> ``examples[0].text``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


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


# -- the document ----------------------------------------------------------------------------
def operations(app: Flask) -> list[tuple[str, str, str, Operation]]:
    """``(OpenAPI path, method, endpoint, Operation)`` of every declared endpoint, in URL-map
    order; undeclared endpoints (the /ui page, static files) are not part of the contract."""
    found = []
    for rule in app.url_map.iter_rules():
        spec = getattr(app.view_functions.get(rule.endpoint), "operation", None)
        if spec is None:
            continue
        path = rule.rule
        for argument in rule.arguments:
            path = path.replace(f"<{argument}>", f"{{{argument}}}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((path, method.lower(), rule.endpoint, spec))
    return found


def components(models: Iterable[type[BaseModel]], settings: Settings) -> dict[str, Any]:
    """``components.schemas`` for these models (and every model they use)."""
    unique = list(dict.fromkeys(models))
    for model in list(unique):  # entries validated one by one are documented too
        for info in model.model_fields.values():
            unique += [meta.model for meta in info.metadata if isinstance(meta, Entries)]
    _, schemas = models_json_schema(
        [(model, "validation") for model in unique], ref_template=REF_TEMPLATE
    )
    return with_settings(schemas.get("$defs", {}), settings)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def query_parameters(model: type[BaseModel], settings: Settings) -> list[dict[str, Any]]:
    """One OpenAPI parameter per field of a query model (lists repeat: form style, exploded)."""
    schema = with_settings(model.model_json_schema(ref_template=REF_TEMPLATE), settings)
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = _not_null(prop)
        parameter: dict[str, Any] = {"name": name, "in": "query", "schema": prop}
        if "description" in prop:
            parameter["description"] = prop.pop("description")
        if name in required:
            parameter["required"] = True
        if prop.get("type") == "array":
            parameter.update(style="form", explode=True)
        parameters.append(parameter)
    return parameters


def path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": _ID.json_schema(),
    }


def with_settings(schema: Any, settings: Settings) -> Any:
    """Replace each settings-bound limit marker with ``maximum``/``maxItems`` from settings."""
    if isinstance(schema, list):
        return [with_settings(value, settings) for value in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: with_settings(value, settings) for key, value in schema.items()}
    setting = out.pop(SETTING_LIMIT_KEY, None)
    if setting is not None:
        out["maxItems" if out.get("type") == "array" else "maximum"] = getattr(settings, setting)
    return out


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent, never null: ``anyOf [X, null]`` -> ``X``, no null default."""
    options = [s for s in schema.get("anyOf", []) if s != {"type": "null"}]
    if "anyOf" in schema and len(options) == 1:
        schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **options[0]}
    if "default" in schema and schema["default"] is None:
        schema = {k: v for k, v in schema.items() if k != "default"}
    schema.pop("title", None)
    return schema
