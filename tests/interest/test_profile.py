"""Decayed profiles: O(dimension) updates that do not depend on arrival order."""

import math

import numpy as np
import pytest

from interest.profile import ProfileState, decay_rates, new_row, state_from_row
from store.settings import DAY

HALF_LIVES = (3600.0, DAY, 7 * DAY, math.inf)


def _events(n: int, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    times = 1_600_000_000 + rng.uniform(0, 30 * DAY, size=n)
    weights = rng.choice([1.0, 2.0, 4.0, -4.0], size=n)
    return [(vectors[i], float(weights[i]), float(times[i]), i) for i in range(n)]


def _apply(events, buffer_size=5):
    state = ProfileState.empty(HALF_LIVES, 8)
    for vector, weight, t, item_id in events:
        state.apply(vector, weight, t, item_id, buffer_size)
    return state


def test_same_events_in_two_arrival_orders_give_the_same_profile():
    events = _events(200)
    in_time_order = _apply(sorted(events, key=lambda e: e[2]))
    shuffled = list(events)
    np.random.default_rng(1).shuffle(shuffled)
    out_of_order = _apply(shuffled)
    assert in_time_order.ref_time == out_of_order.ref_time
    np.testing.assert_allclose(out_of_order.accumulators, in_time_order.accumulators, atol=1e-5)
    np.testing.assert_allclose(out_of_order.weight_sums, in_time_order.weight_sums, atol=1e-5)
    assert out_of_order.recent == in_time_order.recent


def test_accumulator_equals_the_closed_form_decayed_sum():
    events = _events(50)
    state = _apply(events)
    t_ref = max(t for _, _, t, _ in events)
    rates = decay_rates(HALF_LIVES)
    expected = sum(
        w * np.exp(-rates * (t_ref - t))[:, None] * v[None, :].astype(np.float64)
        for v, w, t, _ in events
    )
    np.testing.assert_allclose(state.accumulators, expected, rtol=1e-9, atol=1e-9)


def test_half_life_halves_the_weight():
    state = ProfileState.empty((DAY,), 2)
    state.apply(np.array([1.0, 0.0], dtype=np.float32), 1.0, 0.0, 1, 0)
    state.apply(np.array([0.0, 1.0], dtype=np.float32), 1.0, DAY, 2, 0)
    np.testing.assert_allclose(state.accumulators[0], [0.5, 1.0])


def test_recent_buffer_is_bounded_and_keeps_the_newest():
    events = _events(30)
    state = _apply(events, buffer_size=5)
    newest = sorted(events, key=lambda e: (e[2], e[3]))[-5:]
    assert [item for _, item, _ in state.recent] == [e[3] for e in newest]


@pytest.mark.parametrize("buffer_size", [0, 3])
def test_profile_round_trips_through_its_row(buffer_size):
    state = _apply(_events(10), buffer_size=buffer_size)
    restored = state_from_row(new_row(1, state))
    # Stored as float32, computed in float64.
    assert restored.accumulators.dtype == np.float64
    np.testing.assert_array_equal(
        restored.accumulators, state.accumulators.astype(np.float32).astype(np.float64)
    )
    assert restored.half_lives == state.half_lives
    assert restored.recent == state.recent
    assert restored.event_count == state.event_count


def test_folding_a_batch_equals_applying_each_event():
    """`fold` (one matrix product per batch) against `apply` per event, onto a profile that
    already holds events, with the new batch both older and newer than its reference time."""
    events = _events(60)
    older, batch = events[:30], events[30:]
    one_by_one = _apply(older + batch)
    folded = _apply(older)
    vectors, weights, times, items = zip(*batch, strict=True)
    folded.fold(
        np.stack(vectors).astype(np.float64),
        np.array(weights),
        np.array(times),
        list(items),
        buffer_size=5,
    )
    assert folded.ref_time == one_by_one.ref_time
    assert folded.event_count == one_by_one.event_count == 60
    np.testing.assert_allclose(folded.accumulators, one_by_one.accumulators, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(folded.weight_sums, one_by_one.weight_sums, rtol=1e-9)
    assert folded.recent == one_by_one.recent


def test_folding_into_an_empty_profile_sets_the_reference_time():
    events = _events(7)
    state = ProfileState.empty(HALF_LIVES, 8)
    vectors, weights, times, items = zip(*events, strict=True)
    state.fold(np.stack(vectors).astype(np.float64), np.array(weights), np.array(times), items, 0)
    expected = _apply(events, buffer_size=0)
    assert state.ref_time == max(times)
    np.testing.assert_allclose(state.accumulators, expected.accumulators, rtol=1e-9, atol=1e-9)
    assert state.recent == []


def test_absorbing_another_state_equals_applying_its_events():
    """`absorb` (an import's new events folded as one state into a stored profile) against
    `apply` per event, with the absorbed events both older and newer than the profile's."""
    events = _events(40)
    stored, new = _apply(events[::2]), _apply(events[1::2])
    stored.absorb(new, buffer_size=5)
    expected = _apply(sorted(events, key=lambda e: e[2]))
    assert stored.ref_time == expected.ref_time
    assert stored.event_count == expected.event_count == 40
    np.testing.assert_allclose(stored.accumulators, expected.accumulators, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stored.weight_sums, expected.weight_sums, rtol=1e-9)
    assert stored.recent == expected.recent


def test_folding_groups_into_many_states_equals_applying_each_event():
    """`ProfileState.fold_groups` (an API batch on many users) against `apply` per event, user
    by user: stored states with history and empty ones, groups of 1 to 9 events in any time
    order, some older than the state's reference time and some newer."""
    events = _events(120, seed=4)
    histories = [events[0:10], [], events[10:13], events[13:40], [], events[40:41]]
    sizes = [1, 3, 9, 2, 1, 5]
    batch, start = [], 41
    for size in sizes:
        batch.append(events[start : start + size])
        start += size
    states = [_apply(history) for history in histories]
    flat = [event for group in batch for event in group]
    vectors, weights, times, items = zip(*flat, strict=True)
    ProfileState.fold_groups(
        states,
        np.stack(vectors).astype(np.float64),
        np.array(weights),
        np.array(times),
        list(items),
        np.r_[0, np.cumsum(sizes)],
        buffer_size=5,
    )
    for state, history, group in zip(states, histories, batch, strict=True):
        expected = _apply(history + group)
        assert state.ref_time == expected.ref_time
        assert state.event_count == expected.event_count == len(history) + len(group)
        np.testing.assert_allclose(state.accumulators, expected.accumulators, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(state.weight_sums, expected.weight_sums, rtol=1e-9)
        assert state.recent == expected.recent
