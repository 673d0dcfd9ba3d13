"""A persistent cache of item vectors keyed by (embedder model, content hash).

The production reindex embeds every item of a fresh evaluation database, which takes minutes on
a CPU. A vector depends only on the model and the embedded text (whose hash every item row
carries), so vectors from an earlier run are exactly what the embedder would produce again:
pre-filling them before `Runtime.reindex` skips the work without changing any result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from sqlalchemy import select

from store.db import Database
from store.items import items_by_ids, stale_vector_ids, store_vectors
from store.models import Item

log = logging.getLogger(__name__)


class EmbeddingCache:
    def __init__(self, directory: str | Path, model_name: str) -> None:
        self.model_name = model_name
        slug = hashlib.sha256(model_name.encode()).hexdigest()[:16]
        self.path = Path(directory) / f"embeddings-{slug}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        self._loaded = False

    def load(self) -> dict[str, np.ndarray]:
        if not self._loaded:
            self._loaded = True
            if self.path.is_file():
                with np.load(self.path, allow_pickle=False) as data:
                    if str(data["model"]) == self.model_name:
                        self._vectors = dict(
                            zip(data["hashes"].tolist(), data["vectors"], strict=True)
                        )
        return self._vectors

    def prefill(self, db: Database) -> int:
        """Store cached vectors for items that lack a current one; return how many."""
        cached = self.load()
        if not cached:
            return 0
        with db.read() as session:
            stale = items_by_ids(session, stale_vector_ids(session, self.model_name))
            found = [
                (item.id, item.content_hash, cached[item.content_hash])
                for item in stale.values()
                if item.content_hash in cached
            ]
        if found:
            dim = int(found[0][2].shape[0])
            with db.write() as session:
                store_vectors(
                    session,
                    self.model_name,
                    dim,
                    (
                        (item_id, h, np.asarray(v, dtype=np.float32).tobytes())
                        for item_id, h, v in found
                    ),
                )
        log.info("embedding cache prefilled items=%d", len(found))
        return len(found)

    def save_from(self, db: Database) -> int:
        """Add the database's current vectors to the cache file; return how many were new."""
        cached = self.load()
        added = 0
        with db.read() as session:
            rows = session.execute(
                select(Item.content_hash, Item.vector).where(
                    Item.vector.is_not(None),
                    Item.vector_model == self.model_name,
                    Item.vector_hash == Item.content_hash,
                )
            )
            for content_hash, raw in rows:
                if content_hash not in cached:
                    cached[content_hash] = np.frombuffer(raw, dtype=np.float32).copy()
                    added += 1
        if added:
            self._write(cached)
        log.info("embedding cache saved added=%d total=%d", added, len(cached))
        return added

    def _write(self, cached: dict[str, np.ndarray]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        hashes = np.array(list(cached), dtype=str)
        vectors = np.stack([cached[h] for h in cached]).astype(np.float32)
        handle, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, model=np.array(self.model_name), hashes=hashes, vectors=vectors)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
