"""Time-decayed interest profiles, updated in O(dimension) per event.

A profile keeps one accumulator per half-life. With decay rate ``lam = ln 2 / half_life`` and a
reference time ``t_ref`` (the newest event seen), an event of weight ``w`` on an item with vector
``v`` at time ``t`` adds ``w * exp(-lam * (t_ref - t)) * v``. A newer event first moves the
reference time forward, which rescales the accumulator by ``exp(-lam * (t - t_ref))``. Every
event's contribution is therefore ``w * exp(-lam * (t_ref - t)) * v`` whatever order events
arrive in, late events included, so the profile equals the one rebuilt from the log up to float
error. Alongside, a bounded buffer keeps the most recent events (time, item id, weight) for the
sequence-aware correction network.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from store.models import Profile

RECENT_DTYPE = "<f8"
#: Accumulators are computed in float64 and stored as little-endian float32: every event
#: rewrites its user's profile, and what that costs either database grows with its size (on
#: SQLite a read and rewrite of 9 KB ran at twice the rate of 18 KB). Rounding to float32
#: errs by ~6e-8 of each coordinate per write. Profiles stored as float64 (before 2026-12-02)
#: are told apart by their length and rewritten as float32 by their next write.
ACCUMULATOR_DTYPE = np.dtype("<f4")
_LEGACY_ACCUMULATOR_DTYPE = np.dtype("<f8")


def decay_rates(half_lives: Sequence[float]) -> np.ndarray:
    """ln 2 / half-life per accumulator; an infinite (or zero, as stored) half-life never decays."""
    return _decay_rates(tuple(float(h) for h in half_lives)).copy()


@functools.lru_cache(maxsize=64)
def _decay_rates(half_lives: tuple[float, ...]) -> np.ndarray:
    """Cached for the per-event path (read-only: callers outside this module get a copy)."""
    rates = np.array(
        [0.0 if (h == 0 or math.isinf(h)) else math.log(2.0) / h for h in half_lives],
        dtype=np.float64,
    )
    rates.flags.writeable = False
    return rates


def closest_slot(half_lives: Sequence[float], wanted: float) -> int:
    """Index of the accumulator whose half-life is closest to ``wanted`` on a log scale.

    An infinite half-life matches only an infinite one.
    """

    def distance(h: float) -> float:
        if math.isinf(h) or math.isinf(wanted):
            return 0.0 if math.isinf(h) and math.isinf(wanted) else math.inf
        return abs(math.log(h / wanted))

    return min(range(len(half_lives)), key=lambda i: distance(half_lives[i]))


@dataclass
class ProfileState:
    half_lives: tuple[float, ...]
    accumulators: np.ndarray  # (len(half_lives), dim) float64
    weight_sums: np.ndarray  # (len(half_lives),) float64
    ref_time: float = 0.0
    recent: list[tuple[float, int, float]] = field(default_factory=list)
    event_count: int = 0
    #: Raw embedder vectors of buffered items, by item id, supplied per request and never
    #: stored: a trained model maps those it has no row for into its query (`InterestModel.
    #: missing_text_vectors` says which ones it wants). Examples of an anonymous request that
    #: are not catalogue items have negative ids, one each.
    text_vectors: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, half_lives: Sequence[float], dim: int) -> ProfileState:
        k = len(half_lives)
        return cls(
            half_lives=tuple(float(h) for h in half_lives),
            accumulators=np.zeros((k, dim), dtype=np.float64),
            weight_sums=np.zeros(k, dtype=np.float64),
        )

    @property
    def dim(self) -> int:
        return int(self.accumulators.shape[1])

    def apply(
        self, vector: np.ndarray, weight: float, t: float, item_id: int, buffer_size: int
    ) -> None:
        """Fold one event into the profile: O(dimension) plus the bounded buffer insert."""
        rates = _decay_rates(self.half_lives)
        self._advance(t, rates)
        factor = weight * np.exp(-rates * (self.ref_time - t))
        self.accumulators += factor[:, None] * vector.astype(np.float64)[None, :]
        self.weight_sums += np.abs(factor)
        self.event_count += 1
        if buffer_size > 0:
            bisect.insort(self.recent, (float(t), int(item_id), float(weight)))
            del self.recent[:-buffer_size]

    def fold(
        self,
        vectors: np.ndarray,
        weights: np.ndarray,
        times: np.ndarray,
        item_ids: Sequence[int],
        buffer_size: int,
    ) -> None:
        """Fold many events at once: what `apply` on each gives (up to float rounding), as one
        (half-lives x events) @ (events x dim) product instead of a numpy round trip per event.

        ``vectors`` (n, dim), ``weights`` and ``times`` (epoch seconds) are float64 arrays.
        """
        if len(times) == 0:
            return
        rates = _decay_rates(self.half_lives)
        self._advance(float(times.max()), rates)
        factors = weights[None, :] * np.exp(-rates[:, None] * (self.ref_time - times)[None, :])
        self.accumulators += factors @ vectors
        self.weight_sums += np.abs(factors).sum(axis=1)
        self.event_count += len(times)
        self.recent = _with_events(
            self.recent, times.tolist(), item_ids, weights.tolist(), buffer_size
        )

    @staticmethod
    def fold_groups(
        states: Sequence[ProfileState],
        vectors: np.ndarray,
        weights: np.ndarray,
        times: np.ndarray,
        item_ids: Sequence[int],
        bounds: np.ndarray,
        buffer_size: int,
    ) -> None:
        """Fold consecutive groups of events into ``states``, group ``g`` (events
        ``bounds[g]:bounds[g + 1]``, none empty, any time order) into ``states[g]``: what
        `fold` on each state gives, up to float rounding, in a fixed number of numpy calls.

        Every state has the same half-lives and dimension. For a batch of events on many
        users (an API batch of 100 events on ~100 users), where a numpy round trip per user
        cost more than its arithmetic. ``vectors`` (n, dim), ``weights`` and ``times`` as in
        `fold`.
        """
        if not states:
            return
        rates = _decay_rates(states[0].half_lives)
        starts, counts = bounds[:-1], np.diff(bounds)
        newest = np.maximum.reduceat(times, starts)
        old_refs = np.array([state.ref_time for state in states], dtype=np.float64)
        started = np.array([state.event_count > 0 for state in states])
        # A state with events moves its reference time forward only (`_advance`); an empty
        # one takes its newest event's (its accumulators are zero, any scale keeps them so).
        refs = np.where(started, np.maximum(old_refs, newest), newest)
        scales = np.exp(-rates[None, :] * (refs - old_refs)[:, None])  # (states, half-lives)
        factors = weights[None, :] * np.exp(
            -rates[:, None] * (np.repeat(refs, counts) - times)[None, :]
        )  # (half-lives, events)
        accumulators = np.stack([state.accumulators for state in states])
        accumulators *= scales[:, :, None]
        for slot in range(len(rates)):  # (events, dim) at a time, not (events, slots, dim)
            accumulators[:, slot, :] += np.add.reduceat(
                factors[slot][:, None] * vectors, starts, axis=0
            )
        weight_sums = np.stack([state.weight_sums for state in states]) * scales
        weight_sums += np.add.reduceat(np.abs(factors), starts, axis=1).T
        times_list, weights_list = times.tolist(), weights.tolist()
        for group, state in enumerate(states):
            state.accumulators = accumulators[group]
            state.weight_sums = weight_sums[group]
            state.ref_time = float(refs[group])
            start, end = int(bounds[group]), int(bounds[group + 1])
            state.event_count += end - start
            state.recent = _with_events(
                state.recent,
                times_list[start:end],
                item_ids[start:end],
                weights_list[start:end],
                buffer_size,
            )

    def absorb(self, other: ProfileState, buffer_size: int) -> None:
        """Add the events ``other`` holds (same half-lives and dimension): what folding those
        events into this state gives, up to float rounding, without the events themselves."""
        if other.event_count == 0:
            return
        rates = _decay_rates(self.half_lives)
        self._advance(max(self.ref_time, other.ref_time), rates)
        scale = np.exp(-rates * (self.ref_time - other.ref_time))
        self.accumulators += other.accumulators * scale[:, None]
        self.weight_sums += other.weight_sums * scale
        self.event_count += other.event_count
        if buffer_size > 0:
            self.recent = sorted([*self.recent, *other.recent])[-buffer_size:]

    def _advance(self, t: float, rates: np.ndarray) -> None:
        """Move the reference time forward to ``t`` (rescaling), or set it on the first event."""
        if self.event_count == 0:
            self.ref_time = t
        elif t > self.ref_time:
            scale = np.exp(-rates * (t - self.ref_time))
            self.accumulators *= scale[:, None]
            self.weight_sums *= scale
            self.ref_time = t

    def accumulators_at(self, t: float) -> np.ndarray:
        """The accumulators decayed to time ``t`` (>= the reference time)."""
        if t <= self.ref_time:
            return self.accumulators
        scale = np.exp(-_decay_rates(self.half_lives) * (t - self.ref_time))
        return self.accumulators * scale[:, None]


def _with_events(
    recent: list[tuple[float, int, float]],
    times: Sequence[float],
    item_ids: Sequence[int],
    weights: Sequence[float],
    buffer_size: int,
) -> list[tuple[float, int, float]]:
    """The recent buffer ``recent`` with these events added: the newest ``buffer_size`` as
    sorted (time, item id, weight) tuples (``recent`` itself when the buffer is off)."""
    if buffer_size <= 0:
        return recent
    new = zip(times, (int(i) for i in item_ids), weights, strict=True)
    return sorted([*recent, *new])[-buffer_size:]


def _encode_half_lives(half_lives: Sequence[float]) -> list[float]:
    return [0.0 if math.isinf(h) else float(h) for h in half_lives]


def decode_half_lives(stored: Sequence[float]) -> tuple[float, ...]:
    return tuple(math.inf if h == 0 else float(h) for h in stored)


def pack_recent(recent: Sequence[tuple[float, int, float]]) -> bytes:
    """The recent buffer as stored: little-endian float64 (epoch seconds, item id, weight)
    triples. float64 keeps epoch seconds to the microsecond and item ids exact (< 2**53)."""
    return np.asarray(recent, dtype=RECENT_DTYPE).reshape(-1, 3).tobytes()


def unpack_recent(packed: bytes) -> list[tuple[float, int, float]]:
    # Column by column, zipped in C: half the time of converting each triple in Python (a
    # profile read per event, a hundred per batch).
    flat = np.frombuffer(packed, dtype=RECENT_DTYPE)
    times, items, weights = flat[0::3], flat[1::3].astype(np.int64), flat[2::3]
    return list(zip(times.tolist(), items.tolist(), weights.tolist(), strict=True))


def state_from_row(row: Any) -> ProfileState:
    """The state of a `Profile` row, or of any row with its state columns."""
    half_lives = decode_half_lives(row.half_lives)
    return ProfileState(
        half_lives=half_lives,
        accumulators=decode_accumulators([row.accumulators], len(half_lives), row.dim)[0],
        weight_sums=np.frombuffer(row.weight_sums, dtype=np.float64).copy(),
        ref_time=row.ref_time,
        recent=unpack_recent(row.recent),
        event_count=row.event_count,
    )


def decode_accumulators(stored: Sequence[bytes], slots: int, dim: int) -> np.ndarray:
    """float64 (len(stored), slots, dim): stored profiles' accumulators, each float32 or, as
    written before 2026-12-02, float64 (told apart by length)."""
    size = slots * dim * ACCUMULATOR_DTYPE.itemsize
    if all(len(raw) == size for raw in stored):
        flat = np.frombuffer(b"".join(stored), dtype=ACCUMULATOR_DTYPE)
        return flat.reshape(len(stored), slots, dim).astype(np.float64)
    out = np.empty((len(stored), slots, dim), dtype=np.float64)
    for i, raw in enumerate(stored):
        dtype = ACCUMULATOR_DTYPE if len(raw) == size else _LEGACY_ACCUMULATOR_DTYPE
        out[i] = np.frombuffer(raw, dtype=dtype).reshape(slots, dim)
    return out


def state_values(state: ProfileState, *, shape: bool = True) -> dict[str, Any]:
    """The profile columns for ``state`` (what `store.events.update_profiles` writes); without
    ``dim`` and ``half_lives`` unless ``shape``."""
    return stored_columns(
        state.half_lives,
        state.accumulators,
        state.weight_sums,
        state.ref_time,
        pack_recent(state.recent),
        state.event_count,
        shape=shape,
    )


def stored_columns(
    half_lives: Sequence[float],
    accumulators: np.ndarray,
    weight_sums: np.ndarray,
    ref_time: float,
    recent: bytes,
    event_count: int,
    *,
    shape: bool = True,
) -> dict[str, Any]:
    """A profile's columns from its parts (``recent`` packed); without ``dim`` and
    ``half_lives`` unless ``shape`` (events never change a stored profile's shape)."""
    columns: dict[str, Any] = {
        "accumulators": accumulators.astype(ACCUMULATOR_DTYPE).tobytes(),
        "weight_sums": weight_sums.astype(np.float64, copy=False).tobytes(),
        "ref_time": ref_time,
        "recent": recent,
        "event_count": event_count,
        "last_event_at": datetime.fromtimestamp(ref_time, UTC) if event_count else None,
    }
    if shape:
        columns["dim"] = int(accumulators.shape[-1])
        columns["half_lives"] = _encode_half_lives(half_lives)
    return columns


def write_state(row: Profile, state: ProfileState) -> None:
    """Copy ``state`` into the ORM row (the caller's transaction persists it)."""
    for name, value in state_values(state).items():
        setattr(row, name, value)


def new_row(user_id: int, state: ProfileState) -> Profile:
    row = Profile(user_id=user_id)
    write_state(row, state)
    return row
