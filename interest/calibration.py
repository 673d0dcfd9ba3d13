"""Users' own queries for tuning an approximate index (`indexer.vector_index.CalibrationSample`).

An approximate index is tuned to reach a recall target on sample queries. Synthetic ones (blends
of catalogue vectors) proved easier than users' real queries, whose seen items are excluded
from the search: on the benchmark's 1M catalogue a target met on synthetic queries left users
at 0.936. So a reindex samples users' current query vectors, as the recommender computes them
for the model the index is built for, with their seen items as exclusions. The stored
profiles are used as they are, without the few events each may have pending
(`store.models.PendingEvent`): a sample for tuning, not an answer to anyone.
"""

from __future__ import annotations

import time

import numpy as np

from indexer.vector_index import CalibrationSample
from interest.profile import state_from_row
from interest.query import QueryEncoder
from store.db import Database
from store.events import sample_profile_rows, seen_item_ids

#: Users sampled (evenly over user ids); with fewer than `MIN_USERS` the synthetic queries are used.
USERS = 200
MIN_USERS = 50
#: Heavier users are left out: the exact top-k behind each calibration query must reach past
#: every excluded item, and a handful of very long histories would dominate that cost.
MAX_EVENTS = 1_000


def user_query_sample(db: Database, encoder: QueryEncoder) -> CalibrationSample | None:
    """`USERS` users' queries and seen items (evenly spread over user ids), or None with too
    few users."""
    with db.read() as session:
        rows = sample_profile_rows(session, USERS, max_events=MAX_EVENTS)
        if len(rows) < MIN_USERS:
            return None
        excludes = [seen_item_ids(session, row.user_id) for row in rows]
    states = [state_from_row(row) for row in rows]
    queries = encoder.encode(states, time.time())
    return CalibrationSample(np.asarray(queries, dtype=np.float32), excludes)
