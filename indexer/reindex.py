"""Reindex job: embed what changed, build the index, publish a new version atomically.

Every step can be killed and rerun. Vectors are committed batch by batch with the content hash
they were made from, so a rerun embeds only what is still stale; the index file is written to a
temporary name, fsynced and renamed before its version row (with checksum) is committed and
marked active. A catalogue whose fingerprint matches the active version is not rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session
from tqdm import tqdm

from indexer import pacing
from indexer.embedder import Embedder
from indexer.errors import IndexCorrupt
from indexer.timing import PhaseTimer
from indexer.vector_index import BUILD_SPEC, IVF, CalibrationSample, VectorIndex, choose_kind
from store.db import Database
from store.items import (
    catalogue_revision,
    embedding_text,
    items_by_ids,
    live_vectors_after,
    stale_vector_ids,
    store_vectors,
)
from store.models import IndexVersion
from store.versions import (
    active_index_version,
    add_index_version,
    latest_index_version_for_model,
    list_index_versions,
    prune_index_versions,
)

log = logging.getLogger(__name__)

#: Index versions kept per lineage (model version and embedder) after a publish: the new one
#: and the one it replaces, which servers answer from until they have loaded the new one.
#: Older files are deleted (an index file is as large as the catalogue's vectors).
INDEX_VERSIONS_KEPT = 2
#: A partly written index file (``*.faiss.tmp``, left by a job killed while saving) this old is
#: deleted by the next publish; younger ones may be another job's save in progress.
ABANDONED_TMP_AGE_S = 3600.0

#: Maps (item ids, raw embedder vectors) to the vectors the index stores (a model's item side).
ItemTransform = Callable[[np.ndarray, np.ndarray], np.ndarray]


def identity_transform(ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw, dtype=np.float32)


@dataclass(frozen=True)
class ReindexResult:
    embedded: int
    index_version_id: int
    item_count: int
    rebuilt: bool


def embed_items(db: Database, embedder: Embedder, item_ids: list[int]) -> int:
    """Embed the given items and store their vectors (one transaction)."""
    with db.read() as session:
        items = items_by_ids(session, item_ids)
        work = [(i.id, i.content_hash, embedding_text(i.title, i.text)) for i in items.values()]
    if not work:
        return 0
    vectors = embedder.embed([text for _, _, text in work])
    with db.write() as session:
        store_vectors(
            session,
            embedder.model_name,
            embedder.dim,
            (
                (item_id, made_from, vector.tobytes())
                for (item_id, made_from, _), vector in zip(work, vectors, strict=True)
            ),
        )
    return len(work)


def embed_stale(
    db: Database, embedder: Embedder, *, batch_size: int = 512, progress: bool = False
) -> int:
    """Embed every live item whose vector is missing or stale, committing each batch."""
    with db.read() as session:
        todo = stale_vector_ids(session, embedder.model_name)
    done = 0
    bar = tqdm(total=len(todo), desc="embedding", unit="item", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        done += embed_items(db, embedder, batch)
        bar.update(len(batch))
        pacing.pause()
    bar.close()
    return done


def load_live_vectors(db: Database, model_name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, raw vectors, catalogue revision) of every live item with a current vector.

    The revision is read first, so any change committed while reading is newer than it and is
    applied by servers as an overlay on top of the index. Each page is read in its own short
    transaction: on SQLite a read transaction held for the whole scan would stop the serving
    processes' WAL checkpoints, and the one that follows would stall their writes.
    """
    with db.read() as session:
        revision = catalogue_revision(session)
    id_chunks: list[np.ndarray] = []
    vector_chunks: list[np.ndarray] = []
    last_id = 0
    while True:
        with db.read() as session:
            page = live_vectors_after(session, model_name, last_id)
        if not page:
            break
        last_id = page[-1][0]
        pacing.pause()
        id_chunks.append(np.fromiter((i for i, _ in page), dtype=np.int64, count=len(page)))
        vector_chunks.append(
            np.frombuffer(b"".join(v for _, v in page), dtype=np.float32).reshape(len(page), -1)
        )
    if not id_chunks:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), revision
    return np.concatenate(id_chunks), np.concatenate(vector_chunks), revision


def fingerprint(
    ids: np.ndarray, raw: np.ndarray, model_name: str, model_version_id: int | None, kind_hint: str
) -> str:
    digest = hashlib.sha256()
    digest.update(f"{model_name}|{model_version_id}|{kind_hint}|{len(ids)}".encode())
    digest.update(ids.tobytes())
    for start in range(0, len(raw), 65_536):
        digest.update(np.ascontiguousarray(raw[start : start + 65_536]).tobytes())
        pacing.pause()
    return digest.hexdigest()


def _current_version(
    session: Session, model_name: str, model_version_id: int | None, *, activate: bool
) -> IndexVersion | None:
    """The version a new build would replace: the active one, or (``activate`` false, an
    experiment's index) the newest built for ``model_version_id``."""
    if activate:
        return active_index_version(session)
    return latest_index_version_for_model(session, model_version_id, model_name)


def _unchanged_version(
    db: Database,
    model_name: str,
    model_version_id: int | None,
    exact_max_items: int,
    *,
    activate: bool,
) -> IndexVersion | None:
    """The version to keep when nothing changed since it was built, judged without reading a
    vector: every item or vector write takes a new catalogue revision, so the same revision,
    embedder, model, index kind and build parameters mean the same index (the fingerprint
    check below covers everything else, at the cost of reading every vector)."""
    with db.read() as session:
        current = _current_version(session, model_name, model_version_id, activate=activate)
        if (
            current is None
            or current.catalogue_revision != catalogue_revision(session)
            or current.embedder_model != model_name
            or current.model_version_id != model_version_id
            or current.kind != choose_kind(current.item_count, exact_max_items)
            or current.build_spec != BUILD_SPEC
            or not Path(current.path).exists()
        ):
            return None
        session.expunge(current)
    log.info("reindex unchanged index_version=%d items=%d", current.id, current.item_count)
    return current


def _previous_index(
    current: IndexVersion, model_name: str, model_version_id: int | None
) -> VectorIndex | None:
    """The index a rebuild replaces, when it holds vectors of the same space (same embedder and
    model) so that its coarse centroids can be reused; None when it cannot be read."""
    if (
        current.kind != IVF
        or current.build_spec != BUILD_SPEC
        or current.embedder_model != model_name
        or current.model_version_id != model_version_id
    ):
        return None
    try:
        return VectorIndex.load(Path(current.path), current.checksum, mmap=True)
    except IndexCorrupt as exc:
        log.warning("reindex cannot reuse index_version=%d: %s", current.id, exc)
        return None


def _remove_unused_files(index_dir: Path, superseded: list[str]) -> None:
    """Delete the files of ``superseded`` versions (after their rows' commit: a killed job
    leaves a file without a row at worst, never the reverse) and ``*.faiss.tmp`` files older
    than `ABANDONED_TMP_AGE_S` (killed saves).

    Only files in ``index_dir``: a database copied with its rows still naming another data
    directory's files (a copied deployment) must not delete that one's files."""
    own_dir = index_dir.resolve()
    for old in map(Path, superseded):
        if old.parent.resolve() == own_dir:
            old.unlink(missing_ok=True)
    cutoff = time.time() - ABANDONED_TMP_AGE_S
    for partial in index_dir.glob("*.faiss.tmp"):
        try:
            if partial.stat().st_mtime < cutoff:
                partial.unlink()
        except FileNotFoundError:
            pass  # another job removed or finished it meanwhile


def _warn_about_unnamed_files(index_dir: Path, named: set[str]) -> None:
    """Log the index files in ``index_dir`` that no version of this database names and that
    are older than `ABANDONED_TMP_AGE_S`: a job killed after saving its file but before
    publishing it leaves one, as large as an index. They are not deleted, since another
    database may keep its indexes in the same data directory."""
    cutoff = time.time() - ABANDONED_TMP_AGE_S
    unnamed, size = [], 0
    for path in index_dir.glob("index-*.faiss"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if stat.st_mtime < cutoff and str(path.resolve()) not in named:
            unnamed.append(path.name)
            size += stat.st_size
    if unnamed:
        log.warning(
            "reindex found index files no version of this database names (left by a killed "
            "job, or another database's): files=%d mib=%.1f dir=%s first=%s; delete them "
            "unless another database uses this data directory",
            len(unnamed),
            size / 2**20,
            index_dir,
            sorted(unnamed)[0],
        )


def build_index(
    db: Database,
    embedder: Embedder,
    index_dir: Path,
    *,
    exact_max_items: int,
    transform: ItemTransform = identity_transform,
    model_version_id: int | None = None,
    full: bool = False,
    retrain: bool = False,
    batch_size: int = 512,
    progress: bool = False,
    activate: bool = True,
    calibration: Callable[[], CalibrationSample | None] | None = None,
) -> ReindexResult:
    """Embed stale items, then build and publish a new active index version if anything changed.

    With ``activate`` false the version is published beside the active one (an experiment's
    index for another model); "unchanged" then compares with the newest index for that model.
    ``calibration`` gives users' queries (in the index's space) to tune an approximate index on.

    ``full`` rebuilds the index file even when the catalogue fingerprint is unchanged (it never
    re-embeds items whose stored vectors are current). A rebuilt IVF index keeps the coarse
    centroids of the version it replaces while they still fit (see `VectorIndex.build`);
    ``retrain`` runs k-means regardless (and implies ``full``). ``batch_size`` items are
    embedded and committed at a time: a killed job loses at most one batch.
    """
    full = full or retrain
    timer = PhaseTimer()
    with timer("embed"):
        embedded = embed_stale(db, embedder, batch_size=batch_size, progress=progress)
    if not full and not embedded:
        current = _unchanged_version(
            db, embedder.model_name, model_version_id, exact_max_items, activate=activate
        )
        if current is not None:
            return ReindexResult(0, current.id, current.item_count, rebuilt=False)
    with timer("load"):
        ids, raw, revision = load_live_vectors(db, embedder.model_name)
    dim = raw.shape[1] if len(ids) else embedder.dim
    kind_hint = f"exact<={exact_max_items}|{BUILD_SPEC}"
    with timer("fingerprint"):
        catalogue_fp = fingerprint(ids, raw, embedder.model_name, model_version_id, kind_hint)
    with db.read() as session:
        current = _current_version(
            session, embedder.model_name, model_version_id, activate=activate
        )
        if (
            not full
            and current is not None
            and current.fingerprint == catalogue_fp
            and Path(current.path).exists()
        ):
            log.info("reindex unchanged index_version=%d items=%d", current.id, current.item_count)
            return ReindexResult(embedded, current.id, current.item_count, rebuilt=False)
    approximate = choose_kind(len(ids), exact_max_items) == IVF
    # Outside the read transaction: checksumming a large file there would pin the WAL.
    previous = (
        _previous_index(current, embedder.model_name, model_version_id)
        if approximate and current is not None and not retrain
        else None
    )
    with timer("transform"):
        vectors = transform(ids, raw) if len(ids) else np.zeros((0, dim), dtype=np.float32)
    with timer("queries"):
        sample = calibration() if approximate and calibration is not None else None
    index = (
        VectorIndex.build(
            ids,
            vectors,
            exact_max_items=exact_max_items,
            calibration=sample,
            timer=timer,
            previous=previous,
        )
        if len(ids)
        else VectorIndex.empty(vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else dim)
    )
    path = index_dir / f"index-{uuid.uuid4().hex}.faiss"
    with timer("save"):
        checksum = index.save(path)
    with db.write() as session:
        version = add_index_version(
            session,
            IndexVersion(
                path=str(path.resolve()),
                checksum=checksum,
                item_count=len(index),
                kind=index.kind,
                embedder_model=embedder.model_name,
                model_version_id=model_version_id,
                fingerprint=catalogue_fp,
                catalogue_revision=revision,
                build_spec=BUILD_SPEC,
            ),
            activate=activate,
        )
        version_id = version.id
        superseded = prune_index_versions(session, version, INDEX_VERSIONS_KEPT)
        named = {str(Path(kept.path).resolve()) for kept in list_index_versions(session)}
    _remove_unused_files(index_dir, superseded)
    _warn_about_unnamed_files(index_dir, named)
    log.info(
        "reindex published index_version=%d items=%d kind=%s %s embedded=%d pruned_versions=%d "
        "timings: %s",
        version_id,
        len(index),
        index.kind,
        index.search_settings,
        embedded,
        len(superseded),
        timer,
    )
    return ReindexResult(embedded, version_id, len(index), rebuilt=True)
