"""The ingest path on real SQLite and PostgreSQL: idempotency, profiles, no lost updates."""

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import event as sql_event

import interest.ingest as ingest_module
from interest.ingest import EventInput, ProfileConfig, ingest_events, raw_vectors
from interest.pending import fold_pending
from interest.profile import state_from_row
from interest.rebuild import rebuild_profiles, state_from_events, verify_profiles
from store.db import Database
from store.events import (
    delete_user,
    ensure_users,
    get_profile,
    pending_counts,
    user_events,
    user_ids,
)
from store.items import ItemInput, store_vectors, upsert_items
from store.settings import DEFAULT_EVENT_WEIGHTS, DEFAULT_HALF_LIVES

MODEL = "test-model"
DIM = 16
CONFIG = ProfileConfig(DEFAULT_HALF_LIVES, DIM, 10, DEFAULT_EVENT_WEIGHTS)
#: Profiles that may lag up to three events (`store.models.PendingEvent`).
LAGGING = dataclasses.replace(CONFIG, pending_max=3)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def catalogue(db):
    """Twenty items with random unit vectors stored as if embedded by MODEL."""
    return _with_catalogue(db)


@pytest.fixture
def sqlite_catalogue(sqlite_url):
    """`catalogue` on SQLite only (for what only SQLite does)."""
    database = Database(sqlite_url)
    try:
        yield _with_catalogue(database)
    finally:
        database.dispose()


def _with_catalogue(db):
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
    """The user's profile as readers see it: the stored state, pending events folded in."""
    with db.snapshot() as session:
        user_id = user_ids(session, [user])[user]
        state = state_from_row(get_profile(session, user_id))
        fold_pending(
            session,
            {user_id: state},
            buffer_size=CONFIG.buffer_size,
            event_weights=CONFIG.event_weights,
            embedder_model=MODEL,
        )
        return state


def _stored_and_pending(db, user: str):
    """(events in the stored profile, events pending) of the user."""
    with db.read() as session:
        user_id = user_ids(session, [user])[user]
        stored = get_profile(session, user_id).event_count
        return stored, pending_counts(session, [user_id]).get(user_id, 0)


def _rebuilt(db, user: str):
    """The user's profile rebuilt from the log (what `driftrec verify` compares with)."""
    with db.read() as session:
        events = user_events(session, user_ids(session, [user])[user])
        vectors = raw_vectors(session, list({e.item_id for e in events}), MODEL)
    return state_from_events(events, vectors, CONFIG)


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


@pytest.mark.parametrize("config", [CONFIG, LAGGING], ids=["eager", "lagging"])
def test_concurrent_writers_lose_no_update(catalogue, config):
    """Threads post interleaved events for the same users; every profile equals its rebuild
    (with profiles that may lag, every event is in the stored state or pending, once)."""
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
                ingest_events(catalogue, [event], config, MODEL)
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


@pytest.mark.parametrize(
    ("config", "size"),
    [(CONFIG, 4), (LAGGING, 4), (CONFIG, 12)],
    ids=["eager", "lagging", "folded-ahead"],
)
def test_batches_and_a_concurrent_rebuild_lose_no_update(catalogue, config, size):
    """Writers post batches spanning several users (some new) while profiles are rebuilt from
    the log at the same time: every event ends up in its profile exactly once. The rebuilds
    stop before the writers' last batches, so no late rebuild can hide an update it lost.
    Batches of 12 fold ahead of the write lock on SQLite (`interest.ingest._fold_ahead`),
    racing the other writers and the rebuilds between their read and their write."""
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
                        T0 + timedelta(seconds=worker * 50 + n * size + k),
                    )
                    for k in range(size)
                ]
                assert ingest_events(catalogue, batch, config, MODEL).accepted == size
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    background.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(_profile(catalogue, f"r{u}").event_count for u in range(5)) == 4 * 12 * size
    report = verify_profiles(catalogue, CONFIG, MODEL)
    assert report.checked == 5 and report.drifted == []


def _batch(tag: str, users: list[str], minute: int = 0) -> list[EventInput]:
    """Two events for each user, enough for the batch to fold ahead of the lock on SQLite."""
    return [
        EventInput(
            f"{tag}-{user}-{k}", user, f"i{(n + k) % 20}", "click", T0 + timedelta(minutes=minute)
        )
        for n, user in enumerate(users)
        for k in range(2)
    ]


@pytest.mark.parametrize("meanwhile", ["nothing", "event", "duplicate", "item", "user deleted"])
def test_a_batch_folded_ahead_writes_only_what_nothing_changed_since(
    sqlite_catalogue, monkeypatch, meanwhile
):
    """Between a batch's read and its write another writer posts an event for one of its users,
    or the batch repeats a stored event, or an item changes, or a user is deleted (and so
    created anew by the batch): the profiles concerned are folded under the write lock, the
    others written as folded ahead, and every profile equals its rebuild from the log.
    (Only SQLite batches fold ahead of the write lock.)"""
    catalogue = sqlite_catalogue
    users = [f"a{n}" for n in range(5)]
    ingest_events(catalogue, _batch("first", users), CONFIG, MODEL)
    batch = _batch("second", users, minute=10)
    if meanwhile == "duplicate":
        batch[0] = _batch("first", users)[0]  # a0's first event, stored already
    real_fold_ahead, real_write = ingest_module._fold_ahead, ingest_module._write_folded_ahead
    written: list[set[int]] = []

    def interfere(db, events, config, model):  # type: ignore[no-untyped-def]
        ahead = real_fold_ahead(db, events, config, model)
        if meanwhile == "event":
            ingest_events(catalogue, [_event(99, "a1", minutes=5)], CONFIG, MODEL)
        elif meanwhile == "item":
            with catalogue.write() as session:  # the same content: its vector stays current
                upsert_items(session, [ItemInput("i3", "Item 3")])
        elif meanwhile == "user deleted":
            with catalogue.write() as session:
                delete_user(session, "a2")
        return ahead

    def spy(session, ahead, fresh):  # type: ignore[no-untyped-def]
        written.append(real_write(session, ahead, fresh))
        return written[-1]

    monkeypatch.setattr(ingest_module, "_fold_ahead", interfere)
    monkeypatch.setattr(ingest_module, "_write_folded_ahead", spy)
    result = ingest_events(catalogue, batch, CONFIG, MODEL)

    assert result.accepted == len(batch) - (meanwhile == "duplicate")
    with catalogue.read() as session:
        ids = user_ids(session, users)
    folded_here = {
        "nothing": set(),
        "event": {"a1"},
        "duplicate": {"a0"},
        "user deleted": {"a2"},
    }
    if meanwhile == "item":
        assert written == []  # the catalogue changed: everything was read and folded here
    else:
        assert written == [{ids[u] for u in users} - {ids[u] for u in folded_here[meanwhile]}]
    # Two events in each batch: a2 created anew holds only the second batch's.
    assert _profile(catalogue, "a3").event_count == 4
    assert _profile(catalogue, "a2").event_count == (2 if meanwhile == "user deleted" else 4)
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


def _assert_same_profile(a, b) -> None:
    # Stored accumulators are float32 (`interest.profile.ACCUMULATOR_DTYPE`): ~6e-8 of each
    # coordinate per write.
    np.testing.assert_allclose(a.accumulators, b.accumulators, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.weight_sums, b.weight_sums, rtol=1e-9)
    assert (a.ref_time, a.event_count, a.recent) == (b.ref_time, b.event_count, b.recent)


def test_a_lagging_profile_folds_its_pending_events_past_the_bound(catalogue):
    """A new user's first events make the profile; the next three wait as pending (readers
    fold them in); the fourth folds all four into the stored profile. Out of time order too."""
    ingest_events(catalogue, [_event(1, minutes=50)], LAGGING, MODEL)
    assert _stored_and_pending(catalogue, "u1") == (1, 0)
    for n, minutes in ((2, 10), (3, 70), (4, 30)):
        ingest_events(catalogue, [_event(n, minutes=minutes)], LAGGING, MODEL)
        assert _stored_and_pending(catalogue, "u1") == (1, n - 1)
        _assert_same_profile(_profile(catalogue, "u1"), _rebuilt(catalogue, "u1"))
        assert verify_profiles(catalogue, LAGGING, MODEL).drifted == []
    ingest_events(catalogue, [_event(5, minutes=20)], LAGGING, MODEL)
    assert _stored_and_pending(catalogue, "u1") == (5, 0)
    _assert_same_profile(_profile(catalogue, "u1"), _rebuilt(catalogue, "u1"))


def test_a_batch_past_the_bound_is_folded_with_what_was_pending(catalogue):
    ingest_events(catalogue, [_event(1)], LAGGING, MODEL)
    ingest_events(catalogue, [_event(2), _event(3)], LAGGING, MODEL)
    assert _stored_and_pending(catalogue, "u1") == (1, 2)
    # Two more would make four pending: all five are folded, and another user's batch
    # within the bound waits beside it.
    ingest_events(catalogue, [_event(9, user="u2")], LAGGING, MODEL)
    batch = [_event(4), _event(5), _event(10, user="u2"), _event(11, user="u2")]
    ingest_events(catalogue, batch, LAGGING, MODEL)
    assert _stored_and_pending(catalogue, "u1") == (5, 0)
    assert _stored_and_pending(catalogue, "u2") == (1, 2)
    for user in ("u1", "u2"):
        _assert_same_profile(_profile(catalogue, user), _rebuilt(catalogue, user))
    # A retried batch is all duplicates: nothing becomes pending twice.
    ingest_events(catalogue, batch, LAGGING, MODEL)
    assert _stored_and_pending(catalogue, "u2") == (1, 2)


def test_rebuilds_and_deletes_clear_pending_events(catalogue):
    for n in range(3):
        ingest_events(catalogue, [_event(n), _event(n, user="u2")], LAGGING, MODEL)
    assert _stored_and_pending(catalogue, "u1") == (1, 2)
    rebuild_profiles(catalogue, LAGGING, MODEL)
    assert _stored_and_pending(catalogue, "u1") == (3, 0)
    _assert_same_profile(_profile(catalogue, "u1"), _rebuilt(catalogue, "u1"))
    ingest_events(catalogue, [_event(7, user="u2")], LAGGING, MODEL)
    assert _stored_and_pending(catalogue, "u2") == (3, 1)
    with catalogue.write() as session:
        delete_user(session, "u2")
    with catalogue.read() as session:
        assert user_ids(session, ["u2"]) == {}
        assert pending_counts(session, range(1, 100)) == {}


@pytest.mark.parametrize("raw", [None, "3", "0"])
def test_profiles_lag_only_when_asked(db, tmp_path, raw):
    """DRIFTREC_PROFILE_PENDING_MAX: unset, every event rewrites its profile (0)."""
    from service.runtime import Runtime
    from store.settings import SettingsError, load_settings

    environ = {} if raw is None else {"DRIFTREC_PROFILE_PENDING_MAX": raw}
    runtime = Runtime(load_settings(environ, database_url=db.url, data_dir=tmp_path))
    try:
        assert runtime.profile_config.pending_max == (0 if raw is None else int(raw))
    finally:
        runtime.close()
    with pytest.raises(SettingsError, match="DRIFTREC_PROFILE_PENDING_MAX"):
        load_settings({"DRIFTREC_PROFILE_PENDING_MAX": "-1"})


def _after_reads(monkeypatch, meanwhile) -> None:  # type: ignore[no-untyped-def]
    """Call ``meanwhile(target)`` after each read of a single event's target, before its
    write; the events ``meanwhile`` ingests itself are read as usual."""
    real_read = ingest_module.single_event_target
    busy = threading.local()

    def read(*args, **kwargs):  # type: ignore[no-untyped-def]
        target = real_read(*args, **kwargs)
        if not getattr(busy, "on", False):
            busy.on = True
            try:
                meanwhile(target)
            finally:
                busy.on = False
        return target

    monkeypatch.setattr(ingest_module, "single_event_target", read)


def test_a_known_users_single_event_takes_no_locking_transaction(catalogue, monkeypatch):
    """A known user's single event is read, then written (`store.single_event`); a new
    user's goes through the locking transaction, which creates the user and the profile."""
    db = catalogue
    real_locked = ingest_module._ingest_locked
    locked: list[int] = []

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        locked.append(len(args[1]))
        return real_locked(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "_ingest_locked", counted)
    assert ingest_events(db, [_event(1)], CONFIG, MODEL).accepted == 1  # new user
    for n in range(2, 6):
        result = ingest_events(db, [_event(n)], CONFIG, MODEL)
        assert (result.accepted, result.duplicates) == (1, 0)
    again = ingest_events(db, [_event(3)], CONFIG, MODEL)
    assert (again.accepted, again.duplicates) == (0, 1)
    unknown = ingest_events(db, [EventInput("x", "u1", "nope", "click", T0)], CONFIG, MODEL)
    assert unknown.rejected == [(0, "unknown item 'nope'")]
    assert locked == [1, 1]  # the new user, the unknown item
    assert _profile(db, "u1").event_count == 5
    _assert_same_profile(_profile(db, "u1"), _rebuilt(db, "u1"))


@pytest.mark.parametrize(
    ("meanwhile", "reads_made", "accepted", "u1_events"),
    [
        ("event", 2, True, 3),
        # On u1: u1's profile changed (read again, then refused as a duplicate).
        ("same event", 2, False, 2),
        # On u2: u1's profile did not change, and u1's write found the event id taken.
        ("same event id, other user", 1, False, 1),
    ],
)
def test_a_single_event_written_after_its_profile_changed_is_read_again(
    catalogue, monkeypatch, meanwhile, reads_made, accepted, u1_events
):
    """Another writer stores an event between the single event's read and its write: the
    write changes nothing (its profile version is gone, or its event id is taken) and the
    event is read again, folded into the newer profile or found a duplicate."""
    db = catalogue
    ingest_events(db, [_event(1), _event(1, "u2")], CONFIG, MODEL)
    other = Database(db.url)  # another connection, as a server's other worker would be
    interfering = {
        "event": _event(2),
        "same event": _event(3),
        "same event id, other user": dataclasses.replace(_event(3), user_id="u2"),
    }[meanwhile]
    reads: list[object] = []

    def read_then_interfere(target):  # type: ignore[no-untyped-def]
        if not reads:
            assert ingest_events(other, [interfering], CONFIG, MODEL).accepted == 1
        reads.append(target)

    _after_reads(monkeypatch, read_then_interfere)
    try:
        result = ingest_events(db, [_event(3)], CONFIG, MODEL)
    finally:
        other.dispose()
    assert len(reads) == reads_made
    assert (result.accepted, result.duplicates) == ((1, 0) if accepted else (0, 1))
    assert _profile(db, "u1").event_count == u1_events
    assert verify_profiles(db, CONFIG, MODEL).drifted == []


def test_a_single_event_of_a_user_deleted_meanwhile_creates_the_user_again(catalogue, monkeypatch):
    """The user is deleted between the read and the write: the write finds no profile and
    changes nothing; the second read finds no user, and the locking transaction creates it."""
    db = catalogue
    ingest_events(db, [_event(1)], CONFIG, MODEL)
    reads: list[object] = []

    def read_then_delete(target):  # type: ignore[no-untyped-def]
        if not reads:
            with db.write() as session:
                delete_user(session, "u1")
        reads.append(target)

    _after_reads(monkeypatch, read_then_delete)
    result = ingest_events(db, [_event(2)], CONFIG, MODEL)
    assert result.accepted == 1
    assert reads[0] is not None and reads[1] is None  # then the locking transaction
    assert _profile(db, "u1").event_count == 1
    assert verify_profiles(db, CONFIG, MODEL).drifted == []


def test_a_single_event_on_a_profile_that_keeps_changing_is_folded_under_the_lock(
    catalogue, monkeypatch
):
    """Another event lands between every read and write: after `ALONE_ATTEMPTS` lost races
    the event goes through the locking transaction, and every event is in the profile once."""
    db = catalogue
    ingest_events(db, [_event(1)], CONFIG, MODEL)
    reads: list[bool] = []

    def read_then_interfere(target):  # type: ignore[no-untyped-def]
        n = 100 + len(reads)
        reads.append(True)
        assert ingest_events(db, [_event(n, minutes=n)], CONFIG, MODEL).accepted == 1

    _after_reads(monkeypatch, read_then_interfere)
    result = ingest_events(db, [_event(2)], CONFIG, MODEL)
    monkeypatch.undo()
    assert result.accepted == 1 and len(reads) == ingest_module.ALONE_ATTEMPTS
    assert _profile(db, "u1").event_count == 2 + ingest_module.ALONE_ATTEMPTS
    assert verify_profiles(db, CONFIG, MODEL).drifted == []
