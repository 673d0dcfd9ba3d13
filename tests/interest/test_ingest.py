"""The ingest path on real SQLite and PostgreSQL: idempotency, profiles, no lost updates."""

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import event as sql_event

import interest.ingest as ingest_module
from interest.ingest import EventInput, ProfileConfig, ingest_events
from interest.profile import state_from_row
from interest.rebuild import rebuild_profiles, verify_profiles
from store.db import Database
from store.events import ensure_users, get_profile, user_ids
from store.items import ItemInput, store_vectors, upsert_items
from store.settings import DEFAULT_EVENT_WEIGHTS, DEFAULT_HALF_LIVES

MODEL = "test-model"
DIM = 16
CONFIG = ProfileConfig(DEFAULT_HALF_LIVES, DIM, 10, DEFAULT_EVENT_WEIGHTS)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def catalogue(db):
    """Twenty items with random unit vectors stored as if embedded by MODEL."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with db.write() as session:
        items = upsert_items(session, [ItemInput(f"i{n}", f"Item {n}") for n in range(20)])
        store_vectors(
            session,
            MODEL,
            DIM,
            (
                (item.id, item.content_hash, v.tobytes())
                for item, v in zip(items, vectors, strict=True)
            ),
        )
    return db


def _event(
    n: int,
    user: str = "u1",
    item: int | None = None,
    minutes: int | None = None,
    kind: str = "click",
) -> EventInput:
    return EventInput(
        event_id=f"e{n}-{user}",
        user_id=user,
        item_id=f"i{n % 20 if item is None else item}",
        type=kind,
        timestamp=T0 + timedelta(minutes=n if minutes is None else minutes),
    )


def _profile(db, user: str):
    with db.read() as session:
        return state_from_row(get_profile(session, user_ids(session, [user])[user]))


def test_retried_event_is_a_duplicate_and_changes_nothing(catalogue):
    first = ingest_events(catalogue, [_event(1), _event(2)], CONFIG, MODEL)
    assert (first.accepted, first.duplicates, first.rejected) == (2, 0, [])
    before = _profile(catalogue, "u1")
    retry = ingest_events(catalogue, [_event(2), _event(2)], CONFIG, MODEL)
    assert (retry.accepted, retry.duplicates) == (0, 2)
    after = _profile(catalogue, "u1")
    np.testing.assert_array_equal(after.accumulators, before.accumulators)
    assert after.event_count == 2


def test_bad_entries_are_rejected_by_index_and_the_rest_accepted(catalogue):
    events = [_event(1), EventInput("x", "u1", "nope", "click", T0), _event(3, kind="teleport")]
    result = ingest_events(catalogue, events, CONFIG, MODEL, pre_rejected=[(1, "bad timestamp")])
    # Positions refer to the caller's batch: index 1 was rejected before ingest.
    assert result.accepted == 1
    assert [index for index, _ in result.rejected] == [1, 2, 3]
    assert "unknown item" in result.rejected[1][1]
    assert "unknown event type" in result.rejected[2][1]


def test_two_arrival_orders_give_the_same_stored_profile(catalogue):
    events = [_event(n, minutes=(n * 37) % 300) for n in range(40)]
    for event in events:
        ingest_events(catalogue, [event], CONFIG, MODEL)
    reordered = [
        EventInput(e.event_id.replace("u1", "u2"), "u2", e.item_id, e.type, e.timestamp)
        for e in reversed(events)
    ]
    ingest_events(catalogue, reordered[:25], CONFIG, MODEL)
    ingest_events(catalogue, reordered[25:], CONFIG, MODEL)
    a, b = _profile(catalogue, "u1"), _profile(catalogue, "u2")
    np.testing.assert_allclose(a.accumulators, b.accumulators, atol=1e-5)
    assert a.recent == b.recent


def test_concurrent_writers_lose_no_update(catalogue):
    """Threads post interleaved events for the same users; every profile equals its rebuild."""
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for n in range(15):
                user = f"c{n % 3}"
                event = EventInput(
                    f"w{worker}-{n}",
                    user,
                    f"i{(worker + n) % 20}",
                    "view",
                    T0 + timedelta(seconds=worker * 100 + n),
                )
                ingest_events(catalogue, [event], CONFIG, MODEL)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    counts = sum(_profile(catalogue, f"c{u}").event_count for u in range(3))
    assert counts == 6 * 15
    report = verify_profiles(catalogue, CONFIG, MODEL)
    assert report.checked == 3 and report.drifted == []


def test_a_profile_created_meanwhile_is_folded_into_not_overwritten(catalogue, monkeypatch):
    """A writer finds no profile, and another creates it before the first inserts its own:
    the first folds its events into the other's profile (PostgreSQL; SQLite writers queue).
    The other writer runs to its commit just before the first one's profile insert."""
    if catalogue.dialect != "postgresql":
        pytest.skip("a SQLite write transaction holds the database lock from its start")
    with catalogue.write() as session:
        ensure_users(session, ["race"])
    main = threading.current_thread()
    interleaved: list[bool] = []
    real_insert_profiles = ingest_module.insert_profiles

    def other_writer_first(session, values):  # type: ignore[no-untyped-def]
        if threading.current_thread() is main and not interleaved:
            interleaved.append(True)
            other = threading.Thread(
                target=ingest_events, args=(catalogue, [_event(1, "race")], CONFIG, MODEL)
            )
            other.start()
            other.join()
        return real_insert_profiles(session, values)

    monkeypatch.setattr(ingest_module, "insert_profiles", other_writer_first)
    result = ingest_events(catalogue, [_event(2, "race")], CONFIG, MODEL)
    assert interleaved and result.accepted == 1
    assert _profile(catalogue, "race").event_count == 2
    assert verify_profiles(catalogue, CONFIG, MODEL).drifted == []


def test_batches_and_a_concurrent_rebuild_lose_no_update(catalogue):
    """Writers post batches spanning several users (some new) while profiles are rebuilt from
    the log at the same time: every event ends up in its profile exactly once. The rebuilds
    stop before the writers' last batches, so no late rebuild can hide an update it lost."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def rebuilder() -> None:
        try:
            while not stop.is_set():
                rebuild_profiles(catalogue, CONFIG, MODEL, batch_users=2)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    background = threading.Thread(target=rebuilder)

    def stop_rebuilds() -> None:
        stop.set()
        background.join()

    halfway = threading.Barrier(4, action=stop_rebuilds, timeout=60)  # fail, never hang

    def writer(worker: int) -> None:
        try:
            for n in range(12):
                if n == 10:
                    halfway.wait()
                batch = [
                    EventInput(
                        f"b{worker}-{n}-{k}",
                        f"r{(n + k) % 5}",
                        f"i{(worker * 3 + n + k) % 20}",
                        "click" if k % 2 else "view",
                        T0 + timedelta(seconds=worker * 50 + n * 5 + k),
                    )
                    for k in range(4)
                ]
                assert ingest_events(catalogue, batch, CONFIG, MODEL).accepted == 4
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    background.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(_profile(catalogue, f"r{u}").event_count for u in range(5)) == 4 * 12 * 4
    report = verify_profiles(catalogue, CONFIG, MODEL)
    assert report.checked == 5 and report.drifted == []


def test_rebuild_repairs_a_drifted_profile(catalogue):
    ingest_events(catalogue, [_event(n) for n in range(5)], CONFIG, MODEL)
    with catalogue.write() as session:
        row = get_profile(session, user_ids(session, ["u1"])["u1"])
        row.accumulators = np.zeros_like(state_from_row(row).accumulators).tobytes()
    assert verify_profiles(catalogue, CONFIG, MODEL).drifted
    rebuild_profiles(catalogue, CONFIG, MODEL)
    assert verify_profiles(catalogue, CONFIG, MODEL).drifted == []


def test_rebuild_of_a_subset_touches_only_those_users(catalogue):
    ingest_events(catalogue, [_event(n) for n in range(3)], CONFIG, MODEL)
    ingest_events(catalogue, [_event(n, user="u2") for n in range(3)], CONFIG, MODEL)
    with catalogue.write() as session:
        ids = user_ids(session, ["u1", "u2"])
        for user in ("u1", "u2"):
            row = get_profile(session, ids[user])
            row.accumulators = np.zeros_like(state_from_row(row).accumulators).tobytes()
    # An id with no user is ignored; only u1 is rebuilt.
    assert rebuild_profiles(catalogue, CONFIG, MODEL, user_ids={ids["u1"], 10**9}) == 1
    drifted = {user_id for user_id, _ in verify_profiles(catalogue, CONFIG, MODEL).drifted}
    assert drifted == {ids["u2"]}


def test_verify_does_not_report_an_event_ingested_between_its_reads(catalogue):
    """An event committed after verify read a user's events and before it read the profile
    is in neither (one snapshot): no false drift. PostgreSQL's READ COMMITTED showed it."""
    ingest_events(catalogue, [_event(n) for n in range(3)], CONFIG, MODEL)
    other = Database(catalogue.url)  # another connection, as a server's would be
    injected = []

    def ingest_once(conn, cursor, statement, parameters, context, executemany):
        if not injected and "FROM events" in statement:
            injected.append(True)
            ingest_events(other, [_event(7)], CONFIG, MODEL)

    sql_event.listen(catalogue.engine, "after_cursor_execute", ingest_once)
    try:
        report = verify_profiles(catalogue, CONFIG, MODEL)
    finally:
        sql_event.remove(catalogue.engine, "after_cursor_execute", ingest_once)
        other.dispose()
    assert injected
    assert report.checked == 1 and report.drifted == []
    assert verify_profiles(catalogue, CONFIG, MODEL).drifted == []  # and the event counts
    assert _profile(catalogue, "u1").event_count == 4
