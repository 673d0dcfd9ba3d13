"""Many users' profile states of one shape as arrays: bulk folds without an object per profile.

A rebuild or an import's fold handles a thousand profiles per transaction. As `ProfileState`
objects each one costs a Python object, its recent buffer as a sorted list of tuples (built
from the stored bytes and packed back), and a dozen small numpy calls. As one `StateBlock`
the same arithmetic runs in a fixed number of numpy calls whatever the number of users, and
the stored columns are sliced out of its arrays.

Its results equal `ProfileState.fold` into an empty state and `ProfileState.absorb`, user by
user, up to float rounding; the recent buffers exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from interest.profile import (
    RECENT_DTYPE,
    ProfileState,
    decay_rates,
    decode_accumulators,
    decode_half_lives,
    stored_columns,
)

#: Bytes of one recent-buffer entry as stored: (time, item id, weight) as float64.
RECENT_ENTRY_BYTES = 3 * np.dtype(RECENT_DTYPE).itemsize


@dataclass
class StateBlock:
    """The states of ``user_ids``, row ``u`` of each array being user ``user_ids[u]``'s."""

    half_lives: tuple[float, ...]
    user_ids: np.ndarray  # (users,) int64
    accumulators: np.ndarray  # (users, half-lives, dim) float64
    weight_sums: np.ndarray  # (users, half-lives) float64
    ref_times: np.ndarray  # (users,) float64
    event_counts: np.ndarray  # (users,) int64
    #: Every user's recent buffer, user after user, each in ascending (time, item id, weight)
    #: order: rows of (time, item id, weight) float64, as stored (`interest.profile.pack_recent`).
    recent: np.ndarray  # (entries, 3) float64
    recent_bounds: np.ndarray  # (users + 1,): user u's entries are recent[bounds[u]:bounds[u + 1]]

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def dim(self) -> int:
        return int(self.accumulators.shape[2])

    @classmethod
    def empty(cls, half_lives: Sequence[float], dim: int, user_ids: Sequence[int]) -> StateBlock:
        users = len(user_ids)
        return cls(
            half_lives=tuple(float(h) for h in half_lives),
            user_ids=np.asarray(user_ids, dtype=np.int64),
            accumulators=np.zeros((users, len(half_lives), dim), dtype=np.float64),
            weight_sums=np.zeros((users, len(half_lives)), dtype=np.float64),
            ref_times=np.zeros(users, dtype=np.float64),
            event_counts=np.zeros(users, dtype=np.int64),
            recent=np.zeros((0, 3), dtype=np.float64),
            recent_bounds=np.zeros(users + 1, dtype=np.int64),
        )

    @classmethod
    def from_events(
        cls,
        half_lives: tuple[float, ...],
        user_ids: np.ndarray,
        matrix: np.ndarray,
        rows: np.ndarray,
        weights: np.ndarray,
        times: np.ndarray,
        item_ids: np.ndarray,
        bounds: np.ndarray,
        buffer_size: int,
    ) -> StateBlock:
        """Fresh states of ``user_ids``, user ``g`` holding events ``bounds[g]:bounds[g + 1]``
        (none empty, in ascending time order): what `ProfileState.fold` into an empty state
        gives for each.

        Event ``i``'s vector is ``matrix[rows[i]]`` (float64, one row per distinct item: the
        events' vectors are never all gathered at once); ``weights`` and ``times`` are float64,
        ``item_ids`` int64.
        """
        rates = decay_rates(half_lives)
        starts, counts = bounds[:-1], np.diff(bounds)
        users = len(counts)
        ref_times = times[bounds[1:] - 1]  # the newest event of each user
        owner = np.repeat(np.arange(users), counts)
        factors = weights[:, None] * np.exp(-(ref_times[owner] - times)[:, None] * rates[None, :])
        recent, recent_bounds = _newest(
            owner, times, item_ids, weights, np.full(users, max(buffer_size, 0))
        )
        return cls(
            half_lives=half_lives,
            user_ids=np.asarray(user_ids, dtype=np.int64),
            accumulators=_weighted_sums(factors, rows, matrix, bounds),
            weight_sums=np.add.reduceat(np.abs(factors), starts, axis=0),
            ref_times=ref_times.astype(np.float64),
            event_counts=counts.astype(np.int64),
            recent=recent,
            recent_bounds=recent_bounds,
        )

    @classmethod
    def from_rows(cls, rows: Sequence[Any], half_lives: tuple[float, ...], dim: int) -> StateBlock:
        """The states of stored profile rows (`store.events.lock_profile_rows`), every one of
        these ``half_lives`` and ``dim`` (`matches`)."""
        users, slots = len(rows), len(half_lives)
        packed = [row.recent for row in rows]
        lengths = np.array([len(entry) for entry in packed], dtype=np.int64)
        return cls(
            half_lives=half_lives,
            user_ids=np.array([row.user_id for row in rows], dtype=np.int64),
            accumulators=decode_accumulators([row.accumulators for row in rows], slots, dim),
            weight_sums=np.frombuffer(
                b"".join(row.weight_sums for row in rows), dtype=np.float64
            ).reshape(users, slots),
            ref_times=np.array([row.ref_time for row in rows], dtype=np.float64),
            event_counts=np.array([row.event_count for row in rows], dtype=np.int64),
            recent=np.frombuffer(b"".join(packed), dtype=RECENT_DTYPE).reshape(-1, 3),
            recent_bounds=np.r_[0, np.cumsum(lengths // RECENT_ENTRY_BYTES)],
        )

    def matches(self, row: Any) -> bool:
        """Whether a stored profile row has this block's half-lives and dimension (a profile
        stored under other settings cannot take sums made with these)."""
        return row.dim == self.dim and decode_half_lives(row.half_lives) == self.half_lives

    def absorb(self, other: StateBlock, buffer_size: int) -> None:
        """Add the events each of ``other``'s states holds (the same users in the same order,
        the same half-lives and dimension): `ProfileState.absorb` on each user."""
        rates = decay_rates(self.half_lives)
        adds = other.event_counts > 0
        refs = np.where(adds, np.maximum(self.ref_times, other.ref_times), self.ref_times)
        # A state without events takes the new reference time unscaled (`ProfileState._advance`).
        kept = np.where((self.event_counts > 0)[:, None], _decay(rates, refs, self.ref_times), 1.0)
        # Users without new events add nothing (their reference time stands in for the other's,
        # which may be newer: no overflow in the exponential).
        added = np.where(
            adds[:, None], _decay(rates, refs, np.where(adds, other.ref_times, refs)), 0.0
        )
        self.accumulators = (
            self.accumulators * kept[:, :, None] + other.accumulators * added[:, :, None]
        )
        self.weight_sums = self.weight_sums * kept + other.weight_sums * added
        self.ref_times = refs
        self.event_counts = self.event_counts + other.event_counts
        if buffer_size <= 0:
            return
        users = np.arange(len(self))
        owner = np.r_[
            np.repeat(users, np.diff(self.recent_bounds)),
            np.repeat(users, np.diff(other.recent_bounds)),
        ]
        entries = np.concatenate([self.recent, other.recent])
        # A user without new events keeps their buffer as it was, as `ProfileState.absorb` does.
        limits = np.where(adds, buffer_size, np.diff(self.recent_bounds))
        self.recent, self.recent_bounds = _newest(
            owner, entries[:, 0], entries[:, 1], entries[:, 2], limits
        )

    def take(self, positions: Sequence[int] | np.ndarray) -> StateBlock:
        """The states at these row positions, in that order."""
        index = np.asarray(positions, dtype=np.intp)
        lo, hi = self.recent_bounds[index], self.recent_bounds[index + 1]
        return StateBlock(
            half_lives=self.half_lives,
            user_ids=self.user_ids[index],
            accumulators=self.accumulators[index],
            weight_sums=self.weight_sums[index],
            ref_times=self.ref_times[index],
            event_counts=self.event_counts[index],
            recent=self.recent[_ragged(lo, hi - lo)],
            recent_bounds=np.r_[0, np.cumsum(hi - lo)],
        )

    @classmethod
    def concatenate(cls, parts: Sequence[StateBlock]) -> StateBlock:
        """The parts' states one after the other (the same half-lives and dimension)."""
        first = parts[0]
        sizes = [int(part.recent_bounds[-1]) for part in parts]
        offsets = np.cumsum([0, *sizes[:-1]])
        return cls(
            half_lives=first.half_lives,
            user_ids=np.concatenate([part.user_ids for part in parts]),
            accumulators=np.concatenate([part.accumulators for part in parts]),
            weight_sums=np.concatenate([part.weight_sums for part in parts]),
            ref_times=np.concatenate([part.ref_times for part in parts]),
            event_counts=np.concatenate([part.event_counts for part in parts]),
            recent=np.concatenate([part.recent for part in parts]),
            recent_bounds=np.r_[
                0,
                *[
                    part.recent_bounds[1:] + offset
                    for part, offset in zip(parts, offsets, strict=True)
                ],
            ],
        )

    def values(self, *, shape: bool = True) -> list[dict[str, Any]]:
        """Each user's profile columns with its ``user_id``, as `interest.profile.state_values`
        gives them (without ``dim`` and ``half_lives`` unless ``shape``)."""
        bounds = self.recent_bounds.tolist()
        return [
            {
                "user_id": user_id,
                **stored_columns(
                    self.half_lives,
                    self.accumulators[u],
                    self.weight_sums[u],
                    ref_time,
                    self.recent[bounds[u] : bounds[u + 1]].tobytes(),
                    count,
                    shape=shape,
                ),
            }
            for u, (user_id, ref_time, count) in enumerate(
                zip(
                    self.user_ids.tolist(),
                    self.ref_times.tolist(),
                    self.event_counts.tolist(),
                    strict=True,
                )
            )
        ]

    def states(self) -> dict[int, ProfileState]:
        """Each user's state as a `ProfileState`, by user id."""
        bounds = self.recent_bounds.tolist()
        return {
            user_id: ProfileState(
                half_lives=self.half_lives,
                accumulators=self.accumulators[u].copy(),
                weight_sums=self.weight_sums[u].copy(),
                ref_time=float(self.ref_times[u]),
                recent=[
                    (time, int(item), weight)
                    for time, item, weight in self.recent[bounds[u] : bounds[u + 1]].tolist()
                ],
                event_count=int(self.event_counts[u]),
            )
            for u, user_id in enumerate(self.user_ids.tolist())
        }


def _weighted_sums(
    factors: np.ndarray, rows: np.ndarray, matrix: np.ndarray, bounds: np.ndarray
) -> np.ndarray:
    """(users, half-lives, dim): each user's event vectors (``matrix[rows]``) summed with
    their (events, half-lives) ``factors``; user ``g``'s events are ``bounds[g]:bounds[g + 1]``.
    One BLAS product per user. One sparse product for all of them saved at most a few ms per
    1,000 users at 2.5 events a user (`from_events` 11.5-13.4 ms against 12.1-19.3) and was
    1.6x slower at 200 (the Zen 3 VM of 2026-12-01): not worth a second path."""
    sums = np.empty((len(bounds) - 1, factors.shape[1], matrix.shape[1]), dtype=np.float64)
    for user, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
        sums[user] = factors[lo:hi].T @ matrix[rows[lo:hi]]
    return sums


def _decay(rates: np.ndarray, to: np.ndarray, since: np.ndarray) -> np.ndarray:
    """(users, half-lives) factors taking sums from times ``since`` to times ``to``."""
    return np.exp(-(to - since)[:, None] * rates[None, :])


def _newest(
    owner: np.ndarray,
    times: np.ndarray,
    item_ids: np.ndarray,
    weights: np.ndarray,
    limits: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Recent buffers from entries (``owner``: each entry's user position): each user's
    newest ``limits[user]`` entries in ascending (time, item id, weight) order, as
    `StateBlock.recent` and its bounds. The order is that of sorting the tuples in Python, ties
    included: item ids are exact in float64 (< 2**53)."""
    order = np.lexsort((weights, item_ids, times, owner))
    counts = np.bincount(owner, minlength=len(limits))
    kept = np.minimum(counts, limits)
    ends = np.cumsum(counts)
    picked = order[np.arange(len(order)) >= np.repeat(ends - kept, counts)]
    recent = np.column_stack((times[picked], item_ids[picked], weights[picked])).astype(np.float64)
    return recent, np.r_[0, np.cumsum(kept)]


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[i]:starts[i] + lengths[i]`` for each ``i``, one after the other."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.intp)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    return np.repeat(starts - offsets, lengths) + np.arange(total)
