"""The per-request controls of a recommendation request, from query parameters or a JSON body.

Both forms parse to one `RecommendParams`, which is also what a pagination session stores (as
JSON) to serve the next page of the same request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from interest.controls import CATEGORY_MODES, Controls, FilterError, ItemFilter
from service.errors import ValidationError
from service.validation import (
    EntryError,
    _check_json,
    categories_param,
    parse_flag,
    parse_k,
    string_list,
)
from store.models import EXTERNAL_ID_LENGTH

#: At most this many ids in ``exclude`` (they are resolved in one query and kept in a set).
MAX_EXCLUDE = 10_000
MAX_FIELDS = 100
BODY_FIELDS = {
    "k",
    "exclude_seen",
    "exclude",
    "categories",
    "categories_mode",
    "filter",
    "min_score",
    "diversity",
    "explain",
    "fields",
}
FILTER_FIELDS = {"categories", "categories_mode", "properties"}


@dataclass(frozen=True)
class RecommendParams:
    k: int = 10
    exclude_seen: bool = True
    exclude: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    categories_mode: str = "any"
    properties: dict[str, Any] = field(default_factory=dict)
    min_score: float | None = None
    diversity: float = 0.0
    explain: bool = False
    fields: tuple[str, ...] = ()

    def controls(self) -> Controls:
        return Controls(
            filter=ItemFilter(self.categories, self.categories_mode, self.properties),
            min_score=self.min_score,
            diversity=self.diversity,
            explain=self.explain,
        )

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in data.items()
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecommendParams:
        values = dict(data)
        for key in ("exclude", "categories", "fields"):
            values[key] = tuple(values.get(key) or ())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in values.items() if key in known})

    def with_k(self, k: int) -> RecommendParams:
        return RecommendParams(**{**self.__dict__, "k": k})


def from_query(args: Any, max_k: int) -> RecommendParams:
    """From ``request.args``: lists may repeat and be comma-separated."""
    categories = categories_param(args.getlist("category") + args.getlist("categories"))
    return _checked(
        k=parse_k(args.get("k"), max_k),
        exclude_seen=parse_flag(args.get("exclude_seen"), "exclude_seen", default=True),
        exclude=_ids(categories_param(args.getlist("exclude")), "exclude"),
        categories=categories,
        categories_mode=args.get("categories_mode", "any"),
        properties={},
        min_score=_number(args.get("min_score"), "min_score", from_text=True),
        diversity=_diversity(args.get("diversity"), from_text=True),
        explain=parse_flag(args.get("explain"), "explain", default=False),
        fields=categories_param(args.getlist("fields")),
    )


def from_body(
    body: Mapping[str, Any], max_k: int, *, extra: frozenset[str] = frozenset()
) -> RecommendParams:
    """From a JSON object; unknown fields (other than ``extra``) are refused."""
    unknown = sorted(set(body) - BODY_FIELDS - extra)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}")
    filters = body.get("filter") or {}
    if not isinstance(filters, dict):
        raise ValidationError("filter must be an object")
    unknown = sorted(set(filters) - FILTER_FIELDS)
    if unknown:
        raise ValidationError(f"unknown filter field {unknown[0]!r}")
    categories = [
        *_strings(body, "categories"),
        *_strings(filters, "categories"),
    ]
    mode = filters.get("categories_mode", body.get("categories_mode", "any"))
    properties = filters.get("properties") or {}
    if not isinstance(properties, dict):
        raise ValidationError("filter.properties must be an object")
    try:
        _check_json(properties, "filter.properties", 0)
    except EntryError as exc:
        raise ValidationError(str(exc)) from exc
    return _checked(
        k=parse_k(body.get("k"), max_k, from_query=False),
        exclude_seen=_bool(body, "exclude_seen", True),
        exclude=_ids(_strings(body, "exclude"), "exclude"),
        categories=list(dict.fromkeys(categories)),
        categories_mode=mode,
        properties=properties,
        min_score=_number(body.get("min_score"), "min_score"),
        diversity=_diversity(body.get("diversity")),
        explain=_bool(body, "explain", False),
        fields=_strings(body, "fields"),
    )


def _checked(**values: Any) -> RecommendParams:
    if values["categories_mode"] not in CATEGORY_MODES:
        raise ValidationError(
            f"categories_mode must be any or all, got {str(values['categories_mode'])[:64]!r}"
        )
    if len(values["fields"]) > MAX_FIELDS:
        raise ValidationError(f"at most {MAX_FIELDS} fields")
    params = RecommendParams(
        **{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    )
    try:
        params.controls()  # operators and operands
    except FilterError as exc:
        raise ValidationError(str(exc)) from exc
    return params


def _strings(data: Mapping[str, Any], name: str) -> list[str]:
    raw = data.get(name)
    if raw is None:
        return []
    return string_list(raw, name)


def _ids(values: list[str], name: str) -> list[str]:
    if len(values) > MAX_EXCLUDE:
        raise ValidationError(f"{name} holds {len(values)} ids; the limit is {MAX_EXCLUDE}")
    for value in values:
        if len(value) > EXTERNAL_ID_LENGTH:
            raise ValidationError(f"{name} has an id longer than {EXTERNAL_ID_LENGTH} characters")
    return list(dict.fromkeys(values))


def _bool(data: Mapping[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be true or false")
    return value


def _number(raw: object, name: str, *, from_text: bool = False) -> float | None:
    if raw is None:
        return None
    if from_text and isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError as exc:
            raise ValidationError(f"{name} must be a number, got {raw[:64]!r}") from exc
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    else:
        raise ValidationError(f"{name} must be a number")
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number")
    return value


def _diversity(raw: object, *, from_text: bool = False) -> float:
    value = _number(raw, "diversity", from_text=from_text)
    if value is None:
        return 0.0
    if not 0.0 <= value <= 1.0:
        raise ValidationError(f"diversity must be between 0 and 1, got {value}")
    return value
