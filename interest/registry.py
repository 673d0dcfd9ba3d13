"""Query encoders by model version: the plain blend, or a trained correction network."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from interest.query import PlainBlend, QueryEncoder
from store.db import Database
from store.settings import Settings
from store.versions import get_model_version

log = logging.getLogger(__name__)


class EncoderRegistry:
    """Loads each model version once per process (checksum verified) and caches it."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._plain = PlainBlend(settings.blend_half_life)
        self._loaded: dict[int, QueryEncoder] = {}
        self._lock = threading.Lock()

    def get(self, model_version_id: int | None) -> QueryEncoder:
        if model_version_id is None:
            return self._plain
        with self._lock:
            if model_version_id not in self._loaded:
                from interest.model import load_encoder  # torch only when a model is used

                with self._db.read() as session:
                    version = get_model_version(session, model_version_id)
                    path, checksum = Path(version.path), version.checksum
                self._loaded[model_version_id] = load_encoder(path, checksum, model_version_id)
                log.info("model loaded version=%d", model_version_id)
            return self._loaded[model_version_id]

    def transform_for(self, model_version_id: int | None):  # type: ignore[no-untyped-def]
        return self.get(model_version_id).item_vectors
