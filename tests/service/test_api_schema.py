"""The OpenAPI document against the real app: schemathesis generates requests from
``/openapi.json`` and calls the app through WSGI; no answer may be a 5xx or break the document.

Twice: with requests the document allows, and with requests that break it (negative cases: wrong
types, missing or out-of-range fields), which must get a documented 4xx, never a 5xx. A
longer randomised run of the same checks (600 cases an operation) once found a 500 the
bounded one had not: an example vector past float32's range (commit aa939ab).

Bounded and reproducible: a fixed number of examples per operation (about 200 in all, a mode),
derandomized (the same cases on every run), no deadline (the first search loads nothing, the
model is shared, but a batch upsert embeds).
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import MAX_BATCH

EXAMPLES_PER_OPERATION = 15


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _run(app, mode: GenerationMode) -> Counter[int]:
    """Every operation's generated cases (``mode``: valid or invalid input) against the app,
    each answer checked against the document; the statuses seen."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {app.config['ADMIN_KEY']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    statuses: Counter[int] = Counter()

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            statuses[response.status_code] += 1

        try:
            check()
        except Unsatisfiable:
            # Nothing to make invalid: an operation without parameters or body (/healthz).
            assert mode is GenerationMode.NEGATIVE and not operation.body
    seen = dict(sorted(statuses.items()))
    print(f"schemathesis {mode.value} cases={statuses.total()} statuses={seen}")
    return statuses


def test_api_conforms_to_its_openapi_document(app):
    statuses = _run(app, GenerationMode.POSITIVE)
    assert 100 <= statuses.total() <= 300
    assert statuses[200] > 50 and 401 not in statuses


def test_invalid_requests_get_documented_4xx(app):
    """Cases that violate the document (wrong types, missing fields, out-of-range values,
    unknown query parameters): answered with a documented client error, never a 5xx."""
    statuses = _run(app, GenerationMode.NEGATIVE)
    assert 100 <= statuses.total() <= 300
    assert sum(count for status, count in statuses.items() if 400 <= status < 500) > 50


def test_openapi_document_and_docs_page(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    assert {"/v1/events", "/v1/users/{user_id}/recommendations", "/healthz"} <= set(
        document["paths"]
    )
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/healthz"]["get"]["security"] == []
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "/v1/users/{user_id}/recommendations" in text and "<script" not in text
    # Each operation and schema is described, with the running app's limits.
    assert "id='users_recommendations'" in text and "id='schema-EventEntry'" in text
    events = text[text.index("id='schema-EventsBody'") :]
    assert f"array of <a href='#schema-EventEntry'>EventEntry</a> (max items {MAX_BATCH})" in events
