"""Unit tests of the per-request controls: filters, MMR, explanation contributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from interest.controls import (
    Controls,
    FilterError,
    ItemFilter,
    contributions,
    exponential_decay,
    mmr,
)

SHIRT = (["clothes", "summer"], {"color": "red", "price": 9.5, "released": "2021-03-01"})
SCARF = (["clothes", "winter"], {"color": ["red", "white"], "price": 3, "on_sale": True})


@pytest.mark.parametrize(
    ("item_filter", "shirt", "scarf"),
    [
        (ItemFilter(), True, True),
        (ItemFilter(categories=("summer", "winter")), True, True),
        (ItemFilter(categories=("clothes", "winter"), categories_mode="all"), False, True),
        (ItemFilter(properties={"color": "red"}), True, True),  # list property contains
        (ItemFilter(properties={"color": {"in": ["white", "blue"]}}), False, True),
        (ItemFilter(properties={"price": {"gte": 1, "lt": 9.5}}), False, True),
        (ItemFilter(properties={"price": {"gt": 9}, "color": {"ne": "blue"}}), True, False),
        (ItemFilter(properties={"released": {"gte": "2021-01-01T00:00:00Z"}}), True, False),
        (ItemFilter(properties={"released": {"lt": "2021-03-01"}}), False, False),
        (ItemFilter(properties={"on_sale": True}), False, True),
        (ItemFilter(properties={"price": {"gte": "2020-01-01"}}), False, False),  # wrong type
        (ItemFilter(properties={"on_sale": 1}), False, False),  # booleans are not numbers
    ],
)
def test_item_filter(item_filter, shirt, scarf):
    assert item_filter.matches(*SHIRT) is shirt
    assert item_filter.matches(*SCARF) is scarf


@pytest.mark.parametrize(
    "kwargs",
    [
        {"categories_mode": "most"},
        {"properties": {"price": {"between": [1, 2]}}},
        {"properties": {"price": {}}},
        {"properties": {"size": {"in": "S"}}},
        {"properties": {"price": {"lt": None}}},
    ],
)
def test_bad_filters_are_refused(kwargs):
    with pytest.raises(FilterError):
        ItemFilter(**kwargs)


def test_pool_grows_with_diversity():
    assert Controls().pool_size(10) == 10
    assert Controls(diversity=0.01).pool_size(10) == 40
    assert Controls(diversity=1.0).pool_size(10) == 100
    with pytest.raises(FilterError):
        Controls(diversity=1.5)


def test_mmr_prefers_a_different_second_item():
    vectors = {1: np.array([1.0, 0.0]), 2: np.array([0.99, 0.14]), 3: np.array([0.0, 1.0])}
    relevance = [0.9, 0.89, 0.5]
    assert mmr([1, 2, 3], relevance, vectors, 2, 0.0) == [1, 2]
    assert mmr([1, 2, 3], relevance, vectors, 2, 0.5) == [1, 3]
    assert mmr([1, 2, 3], relevance, {}, 3, 0.5) == [1, 2, 3]  # no vectors: relevance order


def test_contributions_rank_recent_items_by_decayed_weight_times_similarity():
    target = np.array([1.0, 0.0])
    vectors = {10: np.array([1.0, 0.0]), 11: np.array([0.6, 0.8]), 12: np.array([-1.0, 0.0])}
    recent = [(0.0, 10, 1.0), (50.0, 11, 4.0), (60.0, 12, 4.0), (70.0, 10, 1.0)]
    decay = exponential_decay(100.0 - np.array([t for t, _, _ in recent]), 100.0)
    found = contributions(recent, decay, vectors, target)
    assert [c.item_id for c in found] == [11, 10]  # 12 pushes away: not a reason
    assert found[0].weight == pytest.approx(4.0 * 2 ** (-0.5))
    assert found[0].similarity == pytest.approx(0.6)
    assert found[1].weight == pytest.approx(2**-1 + 2**-0.3)  # two events on item 10 add up
    assert contributions(recent, decay, vectors, target, limit=1)[0].item_id == 11
    assert exponential_decay(np.array([1e9]), math.inf)[0] == 1.0
