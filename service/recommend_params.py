"""The per-request controls of a recommendation request, from query parameters or a JSON body.

`RecommendQuery` (the GET form) and `RecommendBody` (the POST forms, with property filters) are
the declared contract: they validate the request and describe it in ``/openapi.json``. Both
build one `RecommendParams`, which is also what a pagination session stores (as JSON) to serve
the next page of the same request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from interest.controls import Controls, FilterError, ItemFilter
from service.fields import (
    FiniteFloat,
    JsonObject,
    K,
    QueryFlag,
    QueryK,
    QueryList,
    QueryNumber,
    Text,
    query_number,
    split_list,
    text,
)
from store.models import EXTERNAL_ID_LENGTH

#: At most this many ids in ``exclude`` (they are resolved in one query and kept in a set).
MAX_EXCLUDE = 10_000
MAX_FIELDS = 100


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
        # A shallow copy (every answer stores one): dataclasses.asdict deep-copies, ten times
        # slower, and these values are the request's own, never changed afterwards.
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in vars(self).items()
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


# -- the contract ----------------------------------------------------------------------------
Mode = Annotated[
    Literal["any", "all"],
    Field(description="`any`: an item in one of the categories; `all`: in every one"),
]
#: Ids to leave out; unknown ones are ignored, so they need not be valid stored ids.
ExcludeId = text(max_length=EXTERNAL_ID_LENGTH)
DIVERSITY = "0 (by relevance) to 1: maximal marginal relevance over a larger pool"
Diversity = Annotated[FiniteFloat, Field(ge=0, le=1, description=DIVERSITY)]
EXPLAIN = "Per item, the user's items that pulled it up most, and the serving path"
FIELDS = "Item properties to return with each item (and `categories`)"
CONDITIONS = (
    "Property name -> a value (equality; a list property matches when it contains it) or "
    "operators: eq, ne, in (a list), gt, gte, lt, lte (numbers or ISO 8601 dates), "
    'e.g. {"color": "red", "price": {"gte": 1, "lt": 10}}'
)


class RecommendQuery(BaseModel):
    """The GET form: lists repeat or are comma-separated; unknown parameters are ignored."""

    k: QueryK = 10
    exclude_seen: QueryFlag = Field(True, description="Leave out items the user has seen")
    category: QueryList = Field([], description="Only items in these categories")
    categories: QueryList = Field([], description="Same as `category`")
    categories_mode: Mode = "any"
    # The parsing validator comes last so that it runs first, on the text.
    exclude: Annotated[
        list[ExcludeId],
        Field(max_length=MAX_EXCLUDE, description="Item ids never to return"),
        BeforeValidator(split_list),
    ] = []
    min_score: QueryNumber | None = Field(None, description="Leave out items scoring below this")
    diversity: Annotated[Diversity, BeforeValidator(query_number)] = 0.0
    explain: QueryFlag = Field(False, description=EXPLAIN)
    fields: Annotated[
        list[Text], Field(max_length=MAX_FIELDS, description=FIELDS), BeforeValidator(split_list)
    ] = []

    def to_params(self) -> RecommendParams:
        return _params(
            self,
            categories=[*self.category, *self.categories],
            categories_mode=self.categories_mode,
        )


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categories: list[Text] = []
    categories_mode: Mode | None = None
    properties: JsonObject = Field({}, description=CONDITIONS)

    @field_validator("properties")
    @classmethod
    def _conditions(cls, properties: dict[str, Any]) -> dict[str, Any]:
        try:
            ItemFilter(properties=properties)  # operators and operands
        except FilterError as exc:
            raise PydanticCustomError("filter", "{error}", {"error": str(exc)}) from None
        return properties


class RecommendBody(BaseModel):
    """The recommendation controls as JSON, plus `filter` (property conditions)."""

    model_config = ConfigDict(extra="forbid")

    k: K = 10
    exclude_seen: bool = Field(True, description="Leave out items the user has seen")
    exclude: Annotated[
        list[ExcludeId], Field(max_length=MAX_EXCLUDE, description="Item ids never to return")
    ] = []
    categories: list[Text] = Field([], description="Only items in these categories")
    categories_mode: Mode = "any"
    filter: Filter | None = None
    min_score: FiniteFloat | None = Field(None, description="Leave out items scoring below this")
    diversity: Diversity = 0.0
    explain: bool = Field(False, description=EXPLAIN)
    fields: Annotated[list[Text], Field(max_length=MAX_FIELDS, description=FIELDS)] = []

    def to_params(self) -> RecommendParams:
        filters = self.filter or Filter()
        return _params(
            self,
            categories=[*self.categories, *filters.categories],
            categories_mode=filters.categories_mode or self.categories_mode,
            properties=filters.properties,
        )


def _params(
    form: RecommendQuery | RecommendBody,
    *,
    categories: list[str],
    categories_mode: str,
    properties: dict[str, Any] | None = None,
) -> RecommendParams:
    """`RecommendParams` from either form: the controls both carry alike, plus the category
    and property filters, which each spells its own way."""
    return RecommendParams(
        k=form.k,
        exclude_seen=form.exclude_seen,
        exclude=tuple(dict.fromkeys(form.exclude)),
        categories=tuple(dict.fromkeys(categories)),
        categories_mode=categories_mode,
        properties=properties if properties is not None else {},
        min_score=form.min_score,
        diversity=form.diversity,
        explain=form.explain,
        fields=tuple(form.fields),
    )
