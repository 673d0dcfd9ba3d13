"""The OpenAPI document against the real app: schemathesis generates requests from
``/openapi.json`` and calls the app through WSGI; no answer may be a 5xx or break the document.

Bounded and reproducible: a fixed number of examples per operation (about 200 in all),
derandomized (the same cases on every run), no deadline (the first search loads nothing, the
model is shared, but a batch upsert embeds).
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
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


def test_api_conforms_to_its_openapi_document(app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {app.config['ADMIN_KEY']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    statuses: Counter[int] = Counter()

    for operation in operations:

        @given(case=operation.as_strategy())
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

        check()
    print(f"schemathesis cases={statuses.total()} statuses={dict(sorted(statuses.items()))}")
    assert 100 <= statuses.total() <= 300
    assert statuses[200] > 50 and 401 not in statuses


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
