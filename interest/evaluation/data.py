"""Read an evaluation dataset through the same readers as `driftrec import`.

A dataset directory is a MovieLens release (ml-latest(-small) / ml-25m CSV, ml-100k, ml-1m) or
driftrec's own import format: ``items.jsonl`` plus ``events.csv`` / ``events.jsonl`` /
``events.ndjson``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interest.evaluation.errors import EvaluationError
from interest.evaluation.split import Interactions
from store.errors import ImportFormatError
from store.importing import (
    EventRecord,
    detect_movielens_format,
    movielens_events,
    movielens_items,
    read_events,
    read_items_jsonl,
)
from store.items import ItemInput

log = logging.getLogger(__name__)

OWN_ITEMS = "items.jsonl"
OWN_EVENTS = ("events.csv", "events.jsonl", "events.ndjson")


@dataclass
class Dataset:
    """A catalogue and an interaction log; item codes follow ``items`` (ascending item id)."""

    name: str
    format: str
    items: list[ItemInput]
    events: list[EventRecord]  # the interactions kept, indexed by ``log.rows``
    log: Interactions
    user_ids: list[str]  # user code -> external id
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)


def _id_key(ids: list[str]):  # type: ignore[no-untyped-def]
    """Numeric ids sort as numbers (MovieLens), anything else as strings."""
    if ids and all(i.isascii() and i.isdigit() for i in ids):
        return int
    return str


def read_source(directory: Path, include_tags: bool) -> tuple[str, list[ItemInput], list]:
    """(format name, items, event records) from the files in ``directory``."""
    if (directory / OWN_ITEMS).is_file():
        events_path = next((directory / n for n in OWN_EVENTS if (directory / n).is_file()), None)
        if events_path is None:
            raise EvaluationError(f"{directory} has {OWN_ITEMS} but no {' / '.join(OWN_EVENTS)}")
        return (
            "driftrec",
            list(read_items_jsonl(directory / OWN_ITEMS)),
            list(read_events(events_path)),
        )
    try:
        layout = detect_movielens_format(directory)
    except ImportFormatError as exc:
        raise EvaluationError(
            f"{exc}; or driftrec's format: {OWN_ITEMS} + {' / '.join(OWN_EVENTS)}"
        ) from exc
    items = list(movielens_items(directory, include_tags=include_tags))
    return f"movielens-{layout}", items, list(movielens_events(directory))


def load_dataset(
    directory: str | Path,
    event_weights: Mapping[str, float],
    *,
    include_tags: bool = False,
) -> Dataset:
    """Load a dataset directory; every event of a positive-weight type is one interaction.

    Events naming an unknown item, of a type the settings do not know, of a non-positive weight
    (``dislike``) or repeating an event id are dropped and counted in ``dropped``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EvaluationError(f"{directory} is not a directory")
    fmt, raw_items, raw_events = read_source(directory, include_tags)
    by_id = {item.external_id: item for item in raw_items}  # last one wins, as in the upsert
    key = _id_key(list(by_id))
    items = [by_id[i] for i in sorted(by_id, key=key)]
    item_code = {item.external_id: n for n, item in enumerate(items)}
    dropped = {"unknown_item": 0, "unknown_type": 0, "not_positive": 0, "duplicate_id": 0}
    kept: list[EventRecord] = []
    seen_ids: set[str] = set()
    for record in raw_events:
        if record.event_id in seen_ids:
            dropped["duplicate_id"] += 1
            continue
        seen_ids.add(record.event_id)
        if record.item_id not in item_code:
            dropped["unknown_item"] += 1
        elif record.type not in event_weights:
            dropped["unknown_type"] += 1
        elif event_weights[record.type] <= 0:
            dropped["not_positive"] += 1
        else:
            kept.append(record)
    if not kept:
        raise EvaluationError(f"{directory}: no usable events")
    user_ids = sorted({record.user_id for record in kept}, key=_id_key([r.user_id for r in kept]))
    user_code = {user: n for n, user in enumerate(user_ids)}
    log_ = Interactions.build(
        np.fromiter((user_code[r.user_id] for r in kept), dtype=np.int64, count=len(kept)),
        np.fromiter((item_code[r.item_id] for r in kept), dtype=np.int64, count=len(kept)),
        np.fromiter((r.timestamp.timestamp() for r in kept), dtype=np.float64, count=len(kept)),
    )
    if any(dropped.values()):
        log.info("evaluation events dropped %s", " ".join(f"{k}={v}" for k, v in dropped.items()))
    return Dataset(directory.name, fmt, items, kept, log_, user_ids, dropped)
