"""Per-request controls on a ranking: item filters, a score floor, diversity and explanations.

`ItemFilter` decides on an item's categories and properties (loaded for a page of candidates
at a time, so the index search over-fetches in rounds instead of filtering inside FAISS).
`mmr` re-ranks a candidate pool by maximal marginal relevance. `contributions` splits a
personalised score into the parts the user's recent items pulled in: the profile is a decayed
blend of item vectors, so each recent item's share is its decayed weight times its similarity
to the recommended item.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

CATEGORY_MODES = ("any", "all")
#: Operators of a property condition given as an object, e.g. ``{"gte": 1, "lt": 10}``.
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
PROPERTY_OPERATORS = ("eq", "ne", "in", *RANGE_OPERATORS)


class FilterError(ValueError):
    """A filter that cannot be applied (unknown operator, wrong operand)."""


@dataclass(frozen=True)
class ItemFilter:
    """Which items a request accepts; an empty filter accepts everything.

    ``properties`` maps a property name to a plain value (equality; an item whose property is a
    list matches when it contains the value) or to an object of operators: ``eq``, ``ne``,
    ``in`` (a list), and ``gt``/``gte``/``lt``/``lte`` on numbers or on ISO 8601 dates.
    An item without the property never matches a condition on it.
    """

    categories: tuple[str, ...] = ()
    categories_mode: str = "any"
    properties: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.categories_mode not in CATEGORY_MODES:
            raise FilterError(f"categories_mode must be any or all, got {self.categories_mode!r}")
        for name, condition in self.properties.items():
            _check_condition(name, condition)

    @property
    def active(self) -> bool:
        return bool(self.categories or self.properties)

    def matches(
        self, categories: Sequence[str] | None, properties: Mapping[str, Any] | None
    ) -> bool:
        if self.categories:
            have = set(categories or ())
            wanted = set(self.categories)
            if self.categories_mode == "all" and not wanted <= have:
                return False
            if self.categories_mode == "any" and not wanted & have:
                return False
        props = properties or {}
        for name, condition in self.properties.items():
            if name not in props or not _satisfies(props[name], condition):
                return False
        return True

    def as_json(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories),
            "categories_mode": self.categories_mode,
            "properties": dict(self.properties),
        }


@dataclass(frozen=True)
class Controls:
    """Everything a caller may ask of one ranking beyond ``k`` and the user."""

    filter: ItemFilter = field(default_factory=ItemFilter)
    min_score: float | None = None
    diversity: float = 0.0
    explain: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.diversity <= 1.0:
            raise FilterError(f"diversity must be between 0 and 1, got {self.diversity}")

    def pool_size(self, k: int) -> int:
        """Candidates to rank before diversifying: k, or 4x to 10x k as diversity grows."""
        if self.diversity <= 0.0:
            return k
        return k * (4 + round(6 * self.diversity))


def _check_condition(name: str, condition: Any) -> None:
    if not isinstance(condition, dict):
        return
    if not condition:
        raise FilterError(f"condition on property {name!r} is an empty object")
    for operator, operand in condition.items():
        if operator not in PROPERTY_OPERATORS:
            raise FilterError(
                f"unknown operator {operator!r} on property {name!r}: "
                f"use one of {', '.join(PROPERTY_OPERATORS)}"
            )
        if operator == "in" and not isinstance(operand, list):
            raise FilterError(f"'in' on property {name!r} needs a list")
        if operator in RANGE_OPERATORS and (
            isinstance(operand, bool) or not isinstance(operand, int | float | str)
        ):
            raise FilterError(f"{operator!r} on property {name!r} needs a number or a date")
        if (
            operator in RANGE_OPERATORS
            and isinstance(operand, int | float)
            and not _is_number(operand)
        ):
            raise FilterError(
                f"{operator!r} on property {name!r} needs a finite number within the range "
                "of a float (~1.8e308)"
            )


def _satisfies(value: Any, condition: Any) -> bool:
    if not isinstance(condition, dict):
        return _equals(value, condition)
    for operator, operand in condition.items():
        if operator == "eq" and not _equals(value, operand):
            return False
        if operator == "ne" and _equals(value, operand):
            return False
        if operator == "in" and not any(_equals(value, option) for option in operand):
            return False
        if operator in RANGE_OPERATORS:
            order = _compare(value, operand)
            if order is None:
                return False
            if not {
                "gt": order > 0,
                "gte": order >= 0,
                "lt": order < 0,
                "lte": order <= 0,
            }[operator]:
                return False
    return True


def _equals(value: Any, wanted: Any) -> bool:
    if isinstance(value, list) and not isinstance(wanted, list):
        return any(_equals(member, wanted) for member in value)
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted
    return bool(value == wanted)


def _compare(value: Any, operand: Any) -> int | None:
    """-1, 0 or 1 comparing numbers with numbers and dates (ISO strings) with dates."""
    if _is_number(value) and _is_number(operand):
        a, b = float(value), float(operand)
    elif isinstance(value, str) and isinstance(operand, str):
        a_time, b_time = _moment(value), _moment(operand)
        if a_time is None or b_time is None:
            return None
        a, b = a_time, b_time
    else:
        return None
    return (a > b) - (a < b)


def _is_number(value: Any) -> bool:
    """A number comparable as a float: not a bool, NaN, infinity or an integer past the float
    range (one stored before upserts refused them is simply not comparable)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large to convert to float
        return False


def _moment(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- diversity -------------------------------------------------------------------------------
def mmr(
    ids: Sequence[int],
    relevance: Sequence[float],
    vectors: Mapping[int, np.ndarray],
    k: int,
    diversity: float,
) -> list[int]:
    """Pick ``k`` of ``ids`` greedily by ``(1 - diversity) * relevance - diversity * max_sim``.

    ``max_sim`` is the largest cosine similarity to an item already picked; candidates without a
    vector are never penalised. ``diversity`` 0 keeps the relevance order.
    """
    if diversity <= 0.0 or len(ids) <= 1:
        return list(ids[:k])
    dim = next((len(v) for v in vectors.values()), 0)
    matrix = np.zeros((len(ids), dim), dtype=np.float32)
    has = np.zeros(len(ids), dtype=bool)
    for row, item_id in enumerate(ids):
        vector = vectors.get(item_id)
        if vector is not None and dim:
            norm = float(np.linalg.norm(vector))
            if norm > 0:
                matrix[row] = vector / norm
                has[row] = True
    rel = np.asarray(relevance, dtype=np.float64)
    max_sim = np.full(len(ids), -np.inf)
    chosen: list[int] = []
    free = np.ones(len(ids), dtype=bool)
    for _ in range(min(k, len(ids))):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = (1.0 - diversity) * rel - diversity * penalty
        value[~free] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        free[best] = False
        if has[best]:
            sims = matrix @ matrix[best]
            sims[~has] = -np.inf
            max_sim = np.maximum(max_sim, sims)
    return [ids[row] for row in chosen]


# -- explanations ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Contribution:
    """How much one of the user's recent items pulled a recommended item up."""

    item_id: int  # internal id of the user's item
    weight: float  # the event's weight times its recency decay
    similarity: float
    contribution: float  # weight * similarity


def contributions(
    recent: Sequence[tuple[float, int, float]],
    decay: np.ndarray,
    recent_vectors: Mapping[int, np.ndarray],
    target: np.ndarray,
    *,
    limit: int = 3,
) -> list[Contribution]:
    """The recent items with the largest positive weight x similarity toward ``target``.

    ``recent`` is the profile's buffer (time, item id, event weight); ``decay`` the recency
    factor of each entry. One item seen several times adds up its events.
    """
    norm = float(np.linalg.norm(target))
    if norm == 0 or not recent:
        return []
    unit = target / norm
    weights: dict[int, float] = {}
    for (_, item_id, weight), factor in zip(recent, decay, strict=True):
        weights[item_id] = weights.get(item_id, 0.0) + float(weight) * float(factor)
    found = []
    for item_id, weight in weights.items():
        vector = recent_vectors.get(item_id)
        if vector is None:
            continue
        length = float(np.linalg.norm(vector))
        if length == 0:
            continue
        similarity = float(np.dot(vector[: len(unit)], unit[: len(vector)]) / length)
        value = weight * similarity
        if value > 0:
            found.append(Contribution(item_id, weight, similarity, value))
    found.sort(key=lambda c: -c.contribution)
    return found[:limit]


def exponential_decay(ages_s: np.ndarray, half_life_s: float) -> np.ndarray:
    if math.isinf(half_life_s) or half_life_s <= 0:
        return np.ones(len(ages_s))
    return np.exp(-math.log(2.0) * np.maximum(ages_s, 0.0) / half_life_s)
