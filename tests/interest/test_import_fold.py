"""Bulk imports fold their new events into the stored profiles (`interest.import_fold`), on
real SQLite and PostgreSQL: the result equals the profile rebuilt from the log, whatever the
order of events, and no event is counted twice when a rebuild runs in between."""

import threading
from dataclasses import replace
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from test_ingest import CONFIG, MODEL, T0, _event, _profile, catalogue  # noqa: F401

import store.importing
from interest.import_fold import ImportFold, import_events_into_profiles
from interest.ingest import EventInput, ingest_events
from interest.rebuild import rebuild_profiles, rebuild_stale_profiles, verify_profiles
from store.errors import ImportFormatError
from store.events import stale_profile_user_ids, user_ids
from store.importing import EVENT_BATCH_SIZE, EventRecord, import_events, new_import_id


def _records(n: int, user: str, *, minutes: int = 0, tag: str = "bulk") -> list[EventRecord]:
    return [
        EventRecord(
            f"{tag}-{user}-{i}",
            user,
            f"i{(3 * i + 1) % 20}",
            "view" if i % 2 else "click",
            None,
            T0 + timedelta(minutes=minutes + i),
        )
        for i in range(n)
    ]


def _import(db, records, *, batch_size=7, fold_now=True):  # type: ignore[no-untyped-def]
    import_id = new_import_id()
    fold = ImportFold(db, CONFIG, MODEL, import_id, batch_users=2)
    stats = import_events(
        db, records, batch_size=batch_size, import_id=import_id, on_commit=fold.add
    )
    if fold_now:
        fold.flush()
    return stats, fold


def test_imported_events_fold_into_existing_profiles_as_a_rebuild_would(catalogue):  # noqa: F811
    # u1 has a profile from the API with events both older and newer than the imported ones;
    # u2 and u3 are new. Batches of 7 split users across transactions.
    ingest_events(catalogue, [_event(n, minutes=100 + n) for n in range(4)], CONFIG, MODEL)
    ingest_events(catalogue, [_event(n, minutes=-50 + n) for n in range(4, 6)], CONFIG, MODEL)
    records = _records(9, "u1", minutes=20) + _records(5, "u2") + _records(11, "u3", minutes=7)
    stats, fold = _import(catalogue, records)
    assert stats.accepted == 25
    assert fold.updated == 3
    assert _profile(catalogue, "u1").event_count == 6 + 9
    report = verify_profiles(catalogue, CONFIG, MODEL)
    assert report.checked == 3 and report.drifted == []
    with catalogue.read() as session:
        assert stale_profile_user_ids(session) == set()


def test_a_rebuild_between_commit_and_fold_is_not_counted_twice(catalogue):  # noqa: F811
    ingest_events(catalogue, [_event(n) for n in range(3)], CONFIG, MODEL)
    _, fold = _import(catalogue, _records(6, "u1", minutes=10), fold_now=False)
    with catalogue.read() as session:
        uid = user_ids(session, ["u1"])["u1"]
    # The rebuild reads the committed import's events from the log and clears its mark ...
    assert rebuild_profiles(catalogue, CONFIG, MODEL, user_ids={uid}) == 1
    # ... so the fold leaves that profile alone instead of adding the same events again.
    assert fold.flush() == 0
    assert _profile(catalogue, "u1").event_count == 9
    assert verify_profiles(catalogue, CONFIG, MODEL).drifted == []


def test_two_imports_of_one_user_each_fold_their_own_events(catalogue):  # noqa: F811
    _, first = _import(catalogue, _records(4, "u1", tag="a"), fold_now=False)
    _, second = _import(catalogue, _records(5, "u1", minutes=30, tag="b"), fold_now=False)
    assert first.flush() == 1 and second.flush() == 1
    assert _profile(catalogue, "u1").event_count == 9
    assert verify_profiles(catalogue, CONFIG, MODEL).drifted == []


@pytest.mark.parametrize("flush_events", [1, 10**6])
def test_folding_in_several_flushes_equals_one(catalogue, flush_events):  # noqa: F811
    import_id = new_import_id()
    fold = ImportFold(catalogue, CONFIG, MODEL, import_id, flush_events=flush_events)
    import_events(
        catalogue, _records(12, "u1"), batch_size=5, import_id=import_id, on_commit=fold.add
    )
    fold.flush()
    assert fold.updated == 1  # one profile, however many flushes
    assert _profile(catalogue, "u1").event_count == 12
    assert verify_profiles(catalogue, CONFIG, MODEL).drifted == []


def test_event_types_without_a_weight_are_rejected(catalogue):  # noqa: F811
    records = _records(3, "u1") + [
        EventRecord("odd", "u1", "i1", "no-such-type", None, T0),
    ]
    stats = import_events(catalogue, records, event_types=frozenset(CONFIG.event_weights))
    assert (stats.accepted, stats.rejected) == (3, 1)


def test_batches_committed_before_an_import_error_are_folded(catalogue):  # noqa: F811
    def records():
        yield from _records(EVENT_BATCH_SIZE, "u1")  # one whole batch, committed
        raise ImportFormatError(Path("events.csv"), EVENT_BATCH_SIZE + 2, "bad line")

    with pytest.raises(ImportFormatError):
        import_events_into_profiles(catalogue, records(), CONFIG, MODEL)
    assert _profile(catalogue, "u1").event_count == EVENT_BATCH_SIZE
    with catalogue.read() as session:
        assert stale_profile_user_ids(session) == set()
    assert verify_profiles(catalogue, CONFIG, MODEL).drifted == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_when_a_part_of_a_split_batch_fails_the_parts_that_committed_are_folded(
    catalogue,  # noqa: F811
    split_batches,
    monkeypatch,
):
    """On PostgreSQL a batch goes as one transaction per part, split by user: when one part
    fails, the others committed, and their events reach the profiles before the error is
    raised; the failed part's users get nothing, and nothing is left marked."""
    users = [f"u{n}" for n in range(8)]
    records = [event for user in users for event in _records(3, user)]
    failing = "u4"
    insert = store.importing.insert_event_batch

    def insert_unless_failing(session, events, **options):  # type: ignore[no-untyped-def]
        if failing in events.user_ids:
            raise RuntimeError("the part with u4 fails")
        return insert(session, events=events, **options)

    monkeypatch.setattr(store.importing, "insert_event_batch", insert_unless_failing)
    with pytest.raises(RuntimeError, match="u4 fails"):
        import_events_into_profiles(catalogue, records, CONFIG, MODEL)
    with catalogue.read() as session:
        stored = user_ids(session, users)
        assert stale_profile_user_ids(session) == set()
    assert failing not in stored and len(stored) >= 2  # the other part's users
    for user in stored:
        assert _profile(catalogue, user).event_count == 3
    report = verify_profiles(catalogue, CONFIG, MODEL)
    assert report.checked == len(stored) and report.drifted == []


def test_imports_api_events_and_rebuilds_at_once_lose_and_double_nothing(catalogue):  # noqa: F811
    """Two imports (batches of 5, folding every 10 events), API batches and profile rebuilds,
    all on the same six users at the same time: every event ends up in its profile exactly
    once. The rebuilds stop first, so no late rebuild can repair an update the others lost."""
    users = [f"m{u}" for u in range(6)]
    errors: list[BaseException] = []
    stop_rebuilds = threading.Event()

    def guarded(work):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        return threading.Thread(target=run)

    def importer(tag: str) -> None:
        import_id = new_import_id()
        fold = ImportFold(catalogue, CONFIG, MODEL, import_id, flush_events=10, batch_users=2)
        records = [
            EventRecord(
                f"{tag}-{n}", users[n % 6], f"i{n % 20}", "view", None, T0 + timedelta(seconds=n)
            )
            for n in range(60)
        ]
        import_events(catalogue, records, batch_size=5, import_id=import_id, on_commit=fold.add)
        fold.flush()

    def poster(worker: int) -> None:
        for n in range(15):
            batch = [
                EventInput(
                    f"api{worker}-{n}-{k}",
                    users[(n + k + worker) % 6],
                    f"i{(n * 3 + k) % 20}",
                    "click",
                    T0 + timedelta(seconds=500 - n * 7 - k),
                )
                for k in range(2)
            ]
            assert ingest_events(catalogue, batch, CONFIG, MODEL).accepted == 2

    def rebuilder() -> None:
        while not stop_rebuilds.is_set():
            rebuild_profiles(catalogue, CONFIG, MODEL, batch_users=2)

    background = guarded(rebuilder)
    writers = [guarded(partial(importer, tag)) for tag in ("x", "y")]
    writers += [guarded(partial(poster, worker)) for worker in range(2)]
    background.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop_rebuilds.set()
    background.join()
    assert not errors, errors
    assert sum(_profile(catalogue, user).event_count for user in users) == 2 * 60 + 2 * 15 * 2
    report = verify_profiles(catalogue, CONFIG, MODEL)
    assert report.checked == 6 and report.drifted == []


def test_a_rebuild_between_two_batches_of_one_flush_is_not_counted_twice(catalogue):  # noqa: F811
    """Batch 1 commits, a rebuild reads it and clears the mark, batch 2 marks the user again;
    the one flush after both adds batch 2's events only."""
    import_id = new_import_id()
    fold = ImportFold(catalogue, CONFIG, MODEL, import_id)

    def records():  # type: ignore[no-untyped-def]
        yield from _records(5, "u1")
        with catalogue.read() as session:  # batch 1 is committed by now
            uid = user_ids(session, ["u1"])["u1"]
        assert rebuild_profiles(catalogue, CONFIG, MODEL, user_ids={uid}) == 1
        yield from _records(5, "u1", minutes=30, tag="later")

    import_events(
        catalogue,
        records(),
        batch_size=5,
        import_id=import_id,
        on_commit=fold.add,
        parse_in_child=False,  # the records wait for batch 1's commit: read as the import goes
    )
    assert fold.flush() == 1
    assert _profile(catalogue, "u1").event_count == 10
    assert verify_profiles(catalogue, CONFIG, MODEL).drifted == []


def test_profiles_stored_with_other_half_lives_are_rebuilt_not_mixed(catalogue):  # noqa: F811
    """Half-lives changed and profiles not rebuilt yet: an import must not add sums made with
    the new ones to sums kept with the old ones; it leaves those users to the rebuild."""
    _import(catalogue, _records(6, "u1"))
    changed = replace(CONFIG, half_lives=tuple(2 * h for h in CONFIG.half_lives))
    stats, updated = import_events_into_profiles(
        catalogue, _records(4, "u1", minutes=60, tag="new"), changed, MODEL
    )
    assert (stats.accepted, updated) == (4, 0)
    assert rebuild_stale_profiles(catalogue, changed, MODEL) == 1
    assert verify_profiles(catalogue, changed, MODEL).drifted == []
