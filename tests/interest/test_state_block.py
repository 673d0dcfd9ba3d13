"""`StateBlock`: many users' profiles folded as arrays, against `ProfileState` user by user."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from interest.profile import ProfileState, state_from_row, state_values
from interest.state_block import StateBlock
from store.settings import DAY

HALF_LIVES = (3600.0, DAY, 7 * DAY, math.inf)
DIM = 8


def _apply(events, buffer_size):
    """The state `ProfileState.apply` builds from (vector, weight, time, item id) events."""
    state = ProfileState.empty(HALF_LIVES, DIM)
    for vector, weight, t, item_id in events:
        state.apply(vector, weight, t, item_id, buffer_size)
    return state


def _groups(sizes, seed):
    """Events on a few items for consecutive users, each user's in time order, with repeated
    items within and across users and ties in time (at the recent buffer's cut too)."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(12, DIM))
    bounds = np.r_[0, np.cumsum(sizes)]
    n = int(bounds[-1])
    rows = rng.integers(0, len(matrix), n)
    weights = rng.choice([1.0, 2.0, -4.0], size=n)
    times = np.concatenate(
        [np.sort(1_600_000_000 + rng.integers(0, 5, size) * 3600.0) for size in sizes]
    )
    return matrix, bounds, rows, weights, times, rows.astype(np.int64) + 100


def _events_of(group, matrix, bounds, rows, weights, times, item_ids):
    span = range(bounds[group], bounds[group + 1])
    return [(matrix[rows[i]], weights[i], times[i], int(item_ids[i])) for i in span]


def _assert_same(state: ProfileState, expected: ProfileState):
    assert state.ref_time == expected.ref_time
    assert state.event_count == expected.event_count
    np.testing.assert_allclose(state.accumulators, expected.accumulators, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state.weight_sums, expected.weight_sums, rtol=1e-9)
    assert state.recent == expected.recent


@pytest.mark.parametrize("buffer_size", [0, 4])
def test_states_of_many_users_equal_applying_each_users_events(buffer_size):
    sizes = [1, 2, 5, 30, 7, 6]
    data = _groups(sizes, seed=3)
    matrix, bounds, rows, weights, times, item_ids = data
    users = np.array([5, 9, 11, 40, 41, 70])
    block = StateBlock.from_events(
        HALF_LIVES, users, matrix, rows, weights, times, item_ids, bounds, buffer_size
    )
    states = block.states()
    assert list(states) == users.tolist()
    for group, user in enumerate(users.tolist()):
        expected = _apply(_events_of(group, *data), buffer_size)
        assert expected.event_count == sizes[group]
        _assert_same(states[user], expected)


def _stored(state: ProfileState, user_id: int) -> SimpleNamespace:
    """``state`` as a stored profile row reads (`store.events.lock_profile_rows`)."""
    return SimpleNamespace(user_id=user_id, **state_values(state))


def test_absorbing_blocks_equals_absorbing_each_users_state():
    """Stored profiles with history, an empty one and one with a longer buffer than the
    setting (kept whole when it gets no events), absorbing new events older and newer than
    theirs, or none."""
    sizes = [10, 3, 27, 1, 6, 4]
    data = _groups(sizes, seed=4)
    history = [_apply(_events_of(g, *data), buffer_size=8) for g in range(len(sizes))]
    history[1] = ProfileState.empty(HALF_LIVES, DIM)
    users = list(range(100, 100 + len(sizes)))
    new_sizes = [2, 9, 1, 3, 5, 1]
    new = _groups(new_sizes, seed=5)
    matrix, bounds, rows, weights, times, item_ids = new
    times = times + np.array([-30, 10, 0, 5, -2, 1]).repeat(new_sizes) * 3600.0
    deltas = StateBlock.from_events(
        HALF_LIVES, np.array(users), matrix, rows, weights, times, item_ids, bounds, 3
    )
    none = StateBlock.empty(HALF_LIVES, DIM, [users[5]])
    deltas = StateBlock.concatenate([deltas.take(range(5)), none])

    block = StateBlock.from_rows(
        [_stored(state, user) for state, user in zip(history, users, strict=True)],
        HALF_LIVES,
        DIM,
    )
    block.absorb(deltas, buffer_size=3)

    absorbed = block.states()
    for g, user in enumerate(users):
        expected = state_from_row(_stored(history[g], user))
        expected.absorb(deltas.states()[user], buffer_size=3)
        _assert_same(absorbed[user], expected)
    assert len(absorbed[users[5]].recent) == min(8, sizes[5])  # no new events: kept as stored


def test_rows_stored_as_float64_read_beside_float32_ones():
    """Profiles written before accumulators were stored as float32 hold float64 bytes: a block
    mixing both kinds, and each row alone, reads every one at its stored precision."""
    data = _groups([5, 8, 2], seed=8)
    states = [_apply(_events_of(g, *data), buffer_size=3) for g in range(3)]
    rows = [_stored(state, user) for user, state in enumerate(states)]
    rows[1].accumulators = states[1].accumulators.astype("<f8").tobytes()  # a legacy row
    assert len(rows[1].accumulators) == 2 * len(rows[0].accumulators)

    block = StateBlock.from_rows(rows, HALF_LIVES, DIM).states()
    for user, state in enumerate(states):
        stored = state.accumulators if user == 1 else state.accumulators.astype(np.float32)
        np.testing.assert_array_equal(block[user].accumulators, stored)
        np.testing.assert_array_equal(state_from_row(rows[user]).accumulators, stored)


def test_values_are_the_stored_columns_of_each_state():
    data = _groups([3, 12], seed=6)
    matrix, bounds, rows, weights, times, item_ids = data
    block = StateBlock.from_events(
        HALF_LIVES, np.array([7, 8]), matrix, rows, weights, times, item_ids, bounds, 5
    )
    states = block.states()
    for values in block.values():
        assert values == {"user_id": values["user_id"], **state_values(states[values["user_id"]])}
    for values in block.values(shape=False):
        expected = state_values(states[values["user_id"]], shape=False)
        assert values == {"user_id": values["user_id"], **expected}
        assert "dim" not in values and "half_lives" not in values


def test_take_and_concatenate_keep_each_users_state():
    data = _groups([4, 1, 9, 2], seed=7)
    matrix, bounds, rows, weights, times, item_ids = data
    users = np.array([1, 2, 3, 4])
    block = StateBlock.from_events(
        HALF_LIVES, users, matrix, rows, weights, times, item_ids, bounds, 3
    )
    states = block.states()
    picked = StateBlock.concatenate([block.take([3, 0]), StateBlock.empty(HALF_LIVES, DIM, [9])])
    assert picked.user_ids.tolist() == [4, 1, 9]
    again = picked.states()
    for user in (4, 1):
        _assert_same(again[user], states[user])
    assert again[9].event_count == 0 and again[9].recent == []


def test_a_row_of_other_half_lives_or_dimension_does_not_match():
    block = StateBlock.empty(HALF_LIVES, DIM, [1])
    row = _stored(ProfileState.empty(HALF_LIVES, DIM), 1)
    assert block.matches(row)
    assert not block.matches(_stored(ProfileState.empty(HALF_LIVES[:2], DIM), 1))
    assert not block.matches(_stored(ProfileState.empty(HALF_LIVES, DIM + 1), 1))


def test_ties_at_the_buffer_cut_keep_the_entries_a_sorted_list_keeps():
    """Events at one time on one item with different weights: the buffer keeps the largest
    (time, item id, weight) tuples, as `ProfileState.apply` does, and so does absorbing."""
    matrix = np.eye(DIM)[:2]
    weights = np.array([4.0, -4.0, 1.0, 2.0, 1.0, 2.0])
    times = np.full(6, 1_600_000_000.0)
    rows = np.array([1, 1, 1, 1, 0, 0])
    item_ids = rows.astype(np.int64) + 7
    bounds = np.array([0, 4, 6])
    block = StateBlock.from_events(
        HALF_LIVES, np.array([1, 2]), matrix, rows, weights, times, item_ids, bounds, 3
    )
    data = (matrix, bounds, rows, weights, times, item_ids)
    first = _apply(_events_of(0, *data), buffer_size=3)
    assert first.recent == [(times[0], 8, 1.0), (times[0], 8, 2.0), (times[0], 8, 4.0)]
    _assert_same(block.states()[1], first)

    stored = StateBlock.from_rows([_stored(first, 1)], HALF_LIVES, DIM)
    stored.absorb(block.take([1]), buffer_size=3)
    expected = state_from_row(_stored(first, 1))
    expected.absorb(block.states()[2], buffer_size=3)
    _assert_same(stored.states()[1], expected)
