"""``/docs``: the OpenAPI document as one browsable HTML page (no JavaScript, nothing fetched).

An index of the operations, then each operation (scope, parameters, body, answers) and each
schema (fields, types, limits, defaults), cross-linked by anchors. Everything shown is read
from the generated document, so the page says exactly what the validation enforces.
"""

from __future__ import annotations

import html
from typing import Any

STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}td,th{padding:4px 10px;"
    "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}h3{margin-top:2em}"
    "code{background:#f4f4f4;padding:0 3px}"
)
#: Constraint keys shown after a type, in this order.
LIMITS = (
    ("minLength", "min length"),
    ("maxLength", "max length"),
    ("minimum", "min"),
    ("maximum", "max"),
    ("minItems", "min items"),
    ("maxItems", "max items"),
    ("pattern", "pattern"),
    ("format", "format"),
)


def render(document: dict[str, Any], spec_url: str) -> str:
    info = document["info"]
    title = html.escape(info["title"])
    index, sections = [], []
    for path, item in document["paths"].items():
        shared = item.get("parameters", [])
        for method, op in item.items():
            if method == "parameters":
                continue
            anchor = html.escape(op["operationId"])
            scope = op.get("x-scope", "none")
            index.append(
                f"<tr><td><code>{method.upper()}</code></td><td><a href='#{anchor}'><code>"
                f"{html.escape(path)}</code></a></td><td>{_text(op['summary'])}</td>"
                f"<td>{scope}</td><td>{', '.join(op['responses'])}</td></tr>"
            )
            parameters = [*shared, *op.get("parameters", [])]
            sections.append(_operation(anchor, method, path, op, parameters))
    schemas = document.get("components", {}).get("schemas", {})
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title} API</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{title} API {html.escape(info['version'])}</h1><p>{_text(info['description'])}</p>"
        "<p>Send <code>Authorization: Bearer &lt;key&gt;</code> (or <code>X-API-Key</code>); "
        f"the full machine-readable description is <a href='{spec_url}'>{spec_url}</a>.</p>"
        "<table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Scope</th>"
        f"<th>Responses</th></tr>{''.join(index)}</table>"
        f"<h2>Operations</h2>{''.join(sections)}"
        f"<h2>Schemas</h2>{''.join(_schema(name, s) for name, s in schemas.items())}"
        "</body></html>"
    )


def _operation(
    anchor: str, method: str, path: str, op: dict[str, Any], parameters: list[dict[str, Any]]
) -> str:
    parts = [
        f"<h3 id='{anchor}'><code>{method.upper()} {html.escape(path)}</code></h3>",
        f"<p>{_text(op['summary'])}. {_text(op.get('description', 'No key needed.'))}</p>",
    ]
    if parameters:
        rows = "".join(
            f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
            f"<td>{_type(p['schema'])}</td><td>{_text(p.get('description', ''))}</td></tr>"
            for p in parameters
        )
        parts.append(
            f"<table><tr><th>Parameter</th><th>In</th><th>Type</th><th></th></tr>{rows}</table>"
        )
    body = op.get("requestBody")
    if body is not None:
        parts.append(f"<p>Body: {_type(body['content']['application/json']['schema'])}</p>")
    answers = []
    for code, response in op["responses"].items():
        if "$ref" in response:
            answers.append(code)
            continue
        content = next(iter(response.get("content", {}).values()), None)
        shape = f" {_type(content['schema'])}" if content else ""
        answers.append(f"{code}{shape}")
    parts.append(f"<p>Answers: {', '.join(answers)}</p>")
    return "".join(parts)


def _schema(name: str, schema: dict[str, Any]) -> str:
    anchor = html.escape(name)
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{html.escape(field)}</code></td><td>{_type(prop)}</td>"
        f"<td>{'yes' if field in required else ''}</td>"
        f"<td>{_text(prop.get('description', ''))}</td></tr>"
        for field, prop in schema.get("properties", {}).items()
    )
    closed = " Unknown fields are refused." if schema.get("additionalProperties") is False else ""
    return (
        f"<h3 id='schema-{anchor}'>{anchor}</h3><p>{_text(schema.get('description', ''))}"
        f"{closed}</p><table><tr><th>Field</th><th>Type</th><th>Required</th><th></th></tr>"
        f"{rows}</table>"
    )


def _type(schema: dict[str, Any]) -> str:
    """A schema in a few words: ``string (max length 256)``, ``array of EventEntry``..."""
    if "$ref" in schema:
        name = html.escape(schema["$ref"].rsplit("/", 1)[-1])
        return f"<a href='#schema-{name}'>{name}</a>"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_type(option) for option in schema[key])
    kind = schema.get("type", "any")
    text = html.escape(" or ".join(kind) if isinstance(kind, list) else kind)
    if kind == "array" and "items" in schema:
        text = f"array of {_type(schema['items'])}"
    if "enum" in schema:
        text += " (" + " | ".join(html.escape(repr(v)) for v in schema["enum"]) + ")"
    limits = [f"{label} {html.escape(str(schema[key]))}" for key, label in LIMITS if key in schema]
    if "default" in schema:
        limits.append(f"default {html.escape(repr(schema['default']))}")
    return f"{text} ({', '.join(limits)})" if limits else text


def _text(value: str) -> str:
    return html.escape(value)
