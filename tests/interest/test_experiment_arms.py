"""Experiment arms: a deterministic split of users by percentage."""

from __future__ import annotations

import pytest

from interest.experiments import CONTROL, TREATMENT, arm_for


@pytest.mark.parametrize("percent", [1.0, 10.0, 50.0, 90.0])
def test_the_split_follows_the_percentage(percent: float) -> None:
    users = [f"user-{n}" for n in range(20_000)]
    treated = sum(arm_for("ab", user, percent) == TREATMENT for user in users)
    # Binomial: 20,000 draws keep the share within 1 point of the target (about 2.8 sigma
    # at 50%; the hash is deterministic, so this cannot flake).
    assert abs(100 * treated / len(users) - percent) < 1.0


def test_arms_are_stable_and_independent_between_experiments() -> None:
    users = [str(n) for n in range(2_000)]
    first = [arm_for("ab", user, 50.0) for user in users]
    assert first == [arm_for("ab", user, 50.0) for user in users]
    other = [arm_for("cd", user, 50.0) for user in users]
    agree = sum(a == b for a, b in zip(first, other, strict=True)) / len(users)
    assert 0.4 < agree < 0.6  # unrelated splits agree about half the time
    assert {arm_for("ab", user, 100.0) for user in users} == {TREATMENT}
    # Raising the share only moves control users to the treatment, never back.
    wider = [arm_for("ab", user, 75.0) for user in users]
    assert all(w == TREATMENT for f, w in zip(first, wider, strict=True) if f == TREATMENT)
    assert CONTROL in wider
