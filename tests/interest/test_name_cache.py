"""`interest.recommend.NameCache`: names valid for one catalogue revision, bounded in size."""

from __future__ import annotations

from interest.recommend import NameCache


def test_names_are_kept_for_one_revision_and_the_cache_stays_bounded():
    cache = NameCache(capacity=3)
    cache.store({1: ("a", "A"), 2: ("b", "B")}, revision=5)  # before any lookup: not its revision
    assert cache.lookup([1, 2], revision=5) == {}
    cache.store({1: ("a", "A"), 2: ("b", "B")}, revision=5)
    assert cache.lookup([1, 2, 3], revision=5) == {1: ("a", "A"), 2: ("b", "B")}
    cache.store({3: ("c", "C"), 4: ("d", "D")}, revision=5)  # over capacity: starts afresh
    assert cache.lookup([1, 2, 3, 4], revision=5) == {3: ("c", "C"), 4: ("d", "D")}
    assert cache.lookup([3, 4], revision=6) == {}  # the catalogue changed
    cache.store({3: ("c", "C2")}, revision=5)  # read under the old revision: dropped
    assert cache.lookup([3], revision=6) == {}
