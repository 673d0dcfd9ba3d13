"""The live index: published versions plus an overlay of later catalogue changes."""

import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import indexer.reindex as reindex
from indexer.live import LiveIndex
from indexer.reindex import build_index
from store.items import (
    ItemInput,
    catalogue_revision,
    delete_item,
    ids_by_external,
    store_vectors,
    upsert_items,
)
from store.models import IndexVersion, Item, ModelVersion
from store.versions import add_index_version, add_model_version, list_index_versions

DIM = 8


class FakeEmbedder:
    """Deterministic vectors from the text hash: a stand-in for MiniLM inside this unit test."""

    model_name = "fake-embedder"
    dim = DIM

    def embed(self, texts, *, progress=False):
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=DIM) for t in texts]
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), DIM)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _add(db, embedder, names, **fields):
    with db.write() as session:
        items = upsert_items(session, [ItemInput(n, f"Title {n}", **fields) for n in names])
        vectors = embedder.embed([f"Title {n}" for n in names])
        store_vectors(
            session,
            embedder.model_name,
            DIM,
            ((i.id, i.content_hash, v.tobytes()) for i, v in zip(items, vectors, strict=True)),
        )
        return {i.external_id: i.id for i in items}


@pytest.fixture
def embedder():
    return FakeEmbedder()


def _ids(db, names):
    with db.read() as session:
        return ids_by_external(session, names)


def test_overlay_serves_changes_made_after_the_published_version(db, embedder, tmp_path):
    ids = _add(db, embedder, [f"a{n}" for n in range(30)])
    build_index(db, embedder, tmp_path, exact_max_items=1000)
    live = LiveIndex(db, embedder.model_name, version_check_interval_s=0)
    live.refresh()
    assert live.version_id is not None and len(live) == 30

    new = _add(db, embedder, ["fresh"])
    with db.write() as session:
        delete_item(session, "a0")
    with db.read() as session:  # a caller's own read transaction serves the catalogue check
        live.refresh(session=session)
    query = embedder.embed(["Title fresh"])[0]
    assert live.search(query, 1)[0].item_id == new["fresh"]
    all_hits = {h.item_id for h in live.search(query, 100)}
    assert ids["a0"] not in all_hits and len(all_hits) == 30


def test_unavailable_and_expired_items_are_never_returned(db, embedder, tmp_path):
    _add(db, embedder, [f"a{n}" for n in range(10)])
    past = datetime.now(UTC) - timedelta(minutes=1)
    hidden = _add(db, embedder, ["off"], available=False) | _add(
        db, embedder, ["old"], expires_at=past
    )
    later = _add(db, embedder, ["soon"], expires_at=datetime.now(UTC) + timedelta(days=1))
    build_index(db, embedder, tmp_path, exact_max_items=1000)
    live = LiveIndex(db, embedder.model_name, version_check_interval_s=0)
    live.refresh()
    returned = {h.item_id for h in live.search(embedder.embed(["Title off"])[0], 100)}
    assert returned.isdisjoint(hidden.values())
    assert later["soon"] in returned
    far_future = (datetime.now(UTC) + timedelta(days=2)).timestamp()
    returned = {h.item_id for h in live.search(embedder.embed(["x"])[0], 100, now=far_future)}
    assert later["soon"] not in returned


def test_a_new_active_version_is_picked_up_without_restart(db, embedder, tmp_path):
    _add(db, embedder, [f"a{n}" for n in range(5)])
    first = build_index(db, embedder, tmp_path, exact_max_items=1000)
    live = LiveIndex(db, embedder.model_name, version_check_interval_s=0)
    live.refresh()
    assert live.version_id == first.index_version_id
    _add(db, embedder, ["b1"])
    second = build_index(db, embedder, tmp_path, exact_max_items=1000)
    assert second.rebuilt and second.index_version_id != first.index_version_id
    live.refresh()
    assert live.version_id == second.index_version_id and len(live) == 6
    unchanged = build_index(db, embedder, tmp_path, exact_max_items=1000)
    assert not unchanged.rebuilt and unchanged.embedded == 0


def test_a_publish_deletes_the_versions_before_the_one_it_replaces(db, embedder, tmp_path):
    """Each published build keeps itself and the version it replaces (servers answer from that
    one until they have loaded the new one); older rows and their files go. Another lineage
    (an experiment's index for another model) is left alone."""
    _add(db, embedder, [f"a{n}" for n in range(5)])
    with db.write() as session:
        model_id = add_model_version(
            session,
            ModelVersion(path="unused", checksum="0" * 64, embedder_model=embedder.model_name),
            activate=False,
        ).id
    experiment = build_index(
        db, embedder, tmp_path, exact_max_items=1000, model_version_id=model_id, activate=False
    )
    # Saves cut short by a kill: an old one (deleted by the next publish) and one that may be
    # another job's save in progress (kept).
    abandoned, in_progress = tmp_path / "index-a.faiss.tmp", tmp_path / "index-b.faiss.tmp"
    abandoned.write_bytes(b"partial")
    in_progress.write_bytes(b"partial")
    hours_ago = time.time() - 2 * reindex.ABANDONED_TMP_AGE_S
    os.utime(abandoned, (hours_ago, hours_ago))
    builds = [
        build_index(db, embedder, tmp_path, exact_max_items=1000, full=True) for _ in range(4)
    ]
    assert all(build.rebuilt for build in builds)
    assert not abandoned.exists() and in_progress.exists()
    in_progress.unlink()
    with db.read() as session:
        versions = {version.id: Path(version.path) for version in list_index_versions(session)}
    assert set(versions) == {
        experiment.index_version_id,
        builds[-2].index_version_id,
        builds[-1].index_version_id,
    }
    assert set(tmp_path.glob("*.faiss")) == set(versions.values())
    live = LiveIndex(db, embedder.model_name, version_check_interval_s=0)
    live.refresh()
    assert live.version_id == builds[-1].index_version_id and len(live) == 5
    # A build into another directory (a copied deployment whose rows still name this one's
    # files) deletes the rows it supersedes but not this directory's files.
    elsewhere = tmp_path / "copy"
    for _ in range(2):
        build_index(db, embedder, elsewhere, exact_max_items=1000, full=True)
    assert set(tmp_path.glob("*.faiss")) == set(versions.values())
    assert len(list(elsewhere.glob("*.faiss"))) == 2


def test_a_publish_names_old_index_files_no_version_names_and_keeps_them(
    db, embedder, tmp_path, caplog
):
    # A job killed between saving its file and publishing it leaves a whole index file with
    # no row; it may also be another database's (one data directory for two databases).
    _add(db, embedder, [f"a{n}" for n in range(3)])
    build_index(db, embedder, tmp_path, exact_max_items=1000)
    unnamed, recent = tmp_path / "index-unnamed.faiss", tmp_path / "index-recent.faiss"
    unnamed.write_bytes(b"x" * 2**20)
    recent.write_bytes(b"x")  # perhaps a save about to be published
    hours_ago = time.time() - 2 * reindex.ABANDONED_TMP_AGE_S
    os.utime(unnamed, (hours_ago, hours_ago))
    with caplog.at_level(logging.WARNING, logger="indexer.reindex"):
        build_index(db, embedder, tmp_path, exact_max_items=1000, full=True)
    warnings = [r.getMessage() for r in caplog.records if "no version" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "files=1 mib=1.0" in warnings[0] and "first=index-unnamed.faiss" in warnings[0]
    assert unnamed.exists() and recent.exists()


def test_items_are_searchable_before_any_index_is_published(db, embedder):
    ids = _add(db, embedder, ["only"])
    live = LiveIndex(db, embedder.model_name, version_check_interval_s=0)
    live.refresh()
    assert live.loaded
    assert [h.item_id for h in live.search(embedder.embed(["Title only"])[0], 5)] == [ids["only"]]


def test_an_unchanged_catalogue_is_recognised_without_reading_a_vector(
    db, embedder, tmp_path, monkeypatch
):
    """Same catalogue revision, same embedder and model: no vector is read. Any write in
    between (here: a vector stored outside an upsert) takes a revision and forces the check."""
    ids = _add(db, embedder, [f"a{n}" for n in range(5)])
    first = build_index(db, embedder, tmp_path, exact_max_items=1000)

    def no_vectors(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("vectors read for an unchanged catalogue")

    with monkeypatch.context() as patched:
        patched.setattr(reindex, "load_live_vectors", no_vectors)
        again = build_index(db, embedder, tmp_path, exact_max_items=1000)
    assert (again.rebuilt, again.index_version_id) == (False, first.index_version_id)

    with db.write() as session:
        before = catalogue_revision(session)
        vector = embedder.embed(["something else entirely"])[0]
        item = session.get(Item, ids["a0"])
        store_vectors(
            session,
            embedder.model_name,
            embedder.dim,
            [(item.id, item.content_hash, vector.tobytes())],
        )
        assert catalogue_revision(session) > before
    changed = build_index(db, embedder, tmp_path, exact_max_items=1000)
    assert changed.rebuilt and changed.index_version_id != first.index_version_id


def test_new_build_parameters_rebuild_an_unchanged_catalogue(db, embedder, tmp_path, monkeypatch):
    """An index built with other parameters (an older driftrec, say) is rebuilt once, even
    though nothing in the catalogue changed; the rebuilt one is then kept."""
    _add(db, embedder, [f"a{n}" for n in range(5)])
    monkeypatch.setattr(reindex, "BUILD_SPEC", "an older build")
    first = build_index(db, embedder, tmp_path, exact_max_items=1000)
    monkeypatch.undo()
    rebuilt = build_index(db, embedder, tmp_path, exact_max_items=1000)
    assert rebuilt.rebuilt and rebuilt.index_version_id != first.index_version_id
    kept = build_index(db, embedder, tmp_path, exact_max_items=1000)
    assert (kept.rebuilt, kept.index_version_id) == (False, rebuilt.index_version_id)


def test_a_full_rebuild_reuses_the_coarse_centroids_unless_asked_to_retrain(
    db, embedder, tmp_path, caplog
):
    """k-means is most of an approximate index's build; a rebuild over the same space keeps
    the published version's centroids (the calibration still checks recall), `--retrain`
    runs it again."""
    caplog.set_level("INFO", logger="indexer.reindex")
    _add(db, embedder, [f"a{n}" for n in range(3000)])

    def build(**kwargs):  # type: ignore[no-untyped-def]
        caplog.clear()
        result = build_index(db, embedder, tmp_path, exact_max_items=100, full=True, **kwargs)
        assert result.rebuilt
        (line,) = [r.getMessage() for r in caplog.records if "timings" in r.getMessage()]
        return line

    assert "train=" in build()  # nothing to reuse yet
    assert "train=" not in build()
    assert "train=" in build(retrain=True)


def _wait_until(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_version_activated_while_serving_loads_in_the_background(
    db, embedder, tmp_path, monkeypatch
):
    """Requests go on with the current version while the new file is read and checked, and
    the switch happens without any request."""
    import indexer.live as live_module

    _add(db, embedder, [f"a{n}" for n in range(5)])
    first = build_index(db, embedder, tmp_path, exact_max_items=1000)
    live = LiveIndex(db, embedder.model_name, version_check_interval_s=0, load_in_background=True)
    try:
        live.refresh()
        assert live.version_id == first.index_version_id
        release, loading = threading.Event(), threading.Event()
        real_load = live_module.VectorIndex.load

        duties = []

        def slow_load(*args, **kwargs):  # type: ignore[no-untyped-def]
            duties.append(kwargs.get("verify_duty", 1.0))
            loading.set()
            assert release.wait(10)
            return real_load(*args, **kwargs)

        monkeypatch.setattr(live_module.VectorIndex, "load", slow_load)
        _add(db, embedder, ["b1"])
        second = build_index(db, embedder, tmp_path, exact_max_items=1000)
        assert loading.wait(10), "the watcher did not start loading the new version"
        live.refresh()  # a request meanwhile: answered from the current version and overlay
        assert live.version_id == first.index_version_id
        query = embedder.embed(["Title b1"])[0]
        assert live.search(query, 1)[0].item_id == _ids(db, ["b1"])["b1"]
        release.set()
        _wait_until(lambda: live.version_id == second.index_version_id)
        # The watcher verified the file beside the requests, not at a whole core.
        assert duties == [live_module.BACKGROUND_VERIFY_DUTY]
        live.refresh()
        assert len(live) == 6
        assert live.search(query, 1)[0].item_id == _ids(db, ["b1"])["b1"]
    finally:
        live.close()


def test_a_corrupt_new_version_leaves_the_current_one_serving(db, embedder, tmp_path, caplog):
    _add(db, embedder, [f"a{n}" for n in range(5)])
    first = build_index(db, embedder, tmp_path, exact_max_items=1000)
    live = LiveIndex(db, embedder.model_name, version_check_interval_s=0, load_in_background=True)
    try:
        live.refresh()
        with db.write() as session:  # a new active version whose file fails its checksum
            current = session.get(IndexVersion, first.index_version_id)
            data = bytearray(open(current.path, "rb").read())
            data[100] ^= 0xFF
            bad = tmp_path / "bad.faiss"
            bad.write_bytes(bytes(data))
            add_index_version(
                session,
                IndexVersion(
                    path=str(bad),
                    checksum=current.checksum,
                    item_count=current.item_count,
                    kind=current.kind,
                    embedder_model=current.embedder_model,
                    fingerprint="bad",
                    catalogue_revision=current.catalogue_revision,
                ),
                activate=True,
            )
        _wait_until(lambda: "index load failed" in caplog.text)
        live.refresh()
        assert live.version_id == first.index_version_id
        assert len(live.search(embedder.embed(["Title a1"])[0], 3)) == 3
        time.sleep(0.2)  # several watcher rounds: the bad file is not retried
        assert caplog.text.count("index load failed") == 1
    finally:
        live.close()
