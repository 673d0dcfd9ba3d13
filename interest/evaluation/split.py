"""Evaluation splits: leave-last-out (protocol 1) and time-cut replay (protocol 2).

Users and items are dense integer codes; item codes follow the catalogue order (ascending item
id), so sorting a user's interactions by (timestamp, item code) is the protocol's stable sort by
(timestamp, item id).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interactions:
    """An interaction log sorted by (user, timestamp, item).

    ``rows`` point back into the source event list, so the very same events can be imported.
    """

    users: np.ndarray  # int64 user codes
    items: np.ndarray  # int64 item codes
    times: np.ndarray  # float64 epoch seconds
    rows: np.ndarray  # int64 positions in the source event list

    @classmethod
    def build(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        times: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> Interactions:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        times = np.asarray(times, dtype=np.float64)
        rows = np.arange(len(users), dtype=np.int64) if rows is None else np.asarray(rows)
        order = np.lexsort((items, times, users))  # stable: equal keys keep source order
        return cls(users[order], items[order], times[order], rows[order].astype(np.int64))

    def __len__(self) -> int:
        return len(self.users)

    def select(self, mask: np.ndarray) -> Interactions:
        """The interactions where ``mask`` is true (still sorted)."""
        return Interactions(self.users[mask], self.items[mask], self.times[mask], self.rows[mask])

    def user_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, stop) positions of each user's run of interactions."""
        if not len(self):
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        starts = np.concatenate([[0], np.flatnonzero(np.diff(self.users)) + 1])
        stops = np.concatenate([starts[1:], [len(self)]])
        return starts, stops

    def position_in_user(self) -> np.ndarray:
        """0-based position of every interaction in its user's time-ordered sequence."""
        starts, stops = self.user_bounds()
        return np.arange(len(self)) - np.repeat(starts, stops - starts)


@dataclass(frozen=True)
class Cases:
    """Ranking requests: for each, the user, their history so far and the held-out target."""

    users: np.ndarray
    targets: np.ndarray
    target_times: np.ndarray
    target_rows: np.ndarray  # the target events' positions in the source event list
    histories: list[np.ndarray]  # item codes in time order
    history_times: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.targets)

    def history_lengths(self) -> np.ndarray:
        return np.array([len(h) for h in self.histories], dtype=np.int64)


@dataclass(frozen=True)
class Split:
    """Training data (the only data models and statistics may see) and the cases to rank."""

    train: Interactions
    cases: Cases
    cut: float | None = None  # replay: events at or after this time are replayed


def leave_last_out(log: Interactions) -> Split:
    """Protocol 1: each user's last interaction is the target, everything before is history.

    Training data is every interaction except each user's last one. Users with a single
    interaction have nothing to learn from and are not evaluated.
    """
    starts, stops = log.user_bounds()
    is_last = np.zeros(len(log), dtype=bool)
    is_last[stops - 1] = True
    evaluated = (stops - starts) >= 2
    last = stops[evaluated] - 1
    bounds = list(zip(starts[evaluated], stops[evaluated], strict=True))
    histories = [log.items[a : b - 1] for a, b in bounds]
    history_times = [log.times[a : b - 1] for a, b in bounds]
    cases = Cases(
        users=log.users[last],
        targets=log.items[last],
        target_times=log.times[last],
        target_rows=log.rows[last],
        histories=histories,
        history_times=history_times,
    )
    return Split(train=log.select(~is_last), cases=cases)


def validation_split(train: Interactions) -> Split:
    """Hold out each user's last training interaction (the protocol's validation target).

    Used only to choose settings; the test target never enters it.
    """
    return leave_last_out(train)


def replay_cut(times: np.ndarray, quantile: float = 0.9) -> float:
    """The time at the ``quantile`` of the event timestamps (events from it on are replayed)."""
    ordered = np.sort(np.asarray(times, dtype=np.float64))
    return float(ordered[min(len(ordered) - 1, int(np.floor(quantile * len(ordered))))])


def replay_split(log: Interactions, quantile: float = 0.9) -> Split:
    """Protocol 2: train on events before the cut, replay the rest in time order.

    Every replayed event is a case; its history is all of the user's earlier events (before the
    cut and replayed earlier), since the production path folds each one in as it arrives.
    """
    cut = replay_cut(log.times, quantile)
    after = log.times >= cut
    starts, stops = log.user_bounds()
    user_start = np.repeat(starts, stops - starts)
    position = np.arange(len(log))
    replayed = np.flatnonzero(after)
    # Time order across users: (timestamp, user, item), stable.
    replayed = replayed[np.lexsort((log.items[replayed], log.users[replayed], log.times[replayed]))]
    cases = Cases(
        users=log.users[replayed],
        targets=log.items[replayed],
        target_times=log.times[replayed],
        target_rows=log.rows[replayed],
        histories=[log.items[user_start[p] : position[p]] for p in replayed],
        history_times=[log.times[user_start[p] : position[p]] for p in replayed],
    )
    return Split(train=log.select(~after), cases=cases, cut=cut)
