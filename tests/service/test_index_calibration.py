"""Users' own queries for tuning the approximate index, read from a real database."""

from __future__ import annotations

import time

import numpy as np
from sqlalchemy import select

from interest.calibration import MIN_USERS, user_query_sample
from service.runtime import Runtime
from store.items import ids_by_external
from store.models import Item


def test_a_sample_of_users_queries_with_their_seen_items(client, runtime: Runtime):
    encoder = runtime.encoders.get(None)
    with runtime.db.read() as session:
        catalogue = sorted(session.scalars(select(Item.external_id)))
    assert user_query_sample(runtime.db, encoder) is None  # no users yet: synthetic queries
    seen: dict[str, set[str]] = {}
    events = []
    for user in range(MIN_USERS + 5):
        items = [catalogue[(user + n) % len(catalogue)] for n in range(3)]
        seen[f"cal-{user}"] = set(items)
        events += [
            {
                "id": f"cal-{user}-{n}",
                "user_id": f"cal-{user}",
                "item_id": item,
                "type": "view",
                "timestamp": time.time() - 60 + n,
            }
            for n, item in enumerate(items)
        ]
    for start in range(0, len(events), 50):
        response = client.post("/v1/events", json={"events": events[start : start + 50]})
        assert response.status_code == 200 and response.get_json()["accepted"] == len(
            events[start : start + 50]
        )
    sample = user_query_sample(runtime.db, encoder)
    assert sample is not None and sample.queries.shape == (MIN_USERS + 5, runtime.embedding_dim)
    assert np.all(np.isfinite(sample.queries))
    with runtime.db.read() as session:
        internal = ids_by_external(session, catalogue)
    expected = sorted(sorted(internal[i] for i in items) for items in seen.values())
    assert sorted(sorted(e) for e in sample.excludes) == expected
