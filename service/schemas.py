"""The API's request and response models: the single statement of its contract.

Request models validate (through `service.contract.operation`, or `contract.entry` for batch
entries reported one by one) and build the domain inputs (`ItemEntry.to_input` ->
`store.items.ItemInput`, `EventEntry.to_input` -> `interest.ingest.EventInput`,
`ExampleInput.to_example`). Response models only describe the answers in ``/openapi.json``;
the endpoints return plain dicts, and tests/service/test_api_schema.py checks every answer
against the document. A response model does not forbid extra fields, so adding one (as the
experiment's ``experiment`` and ``arm`` on `Recommendations`) is a one-line change here that
keeps old clients valid.
The recommendation controls live with `RecommendParams` in `service.recommend_params`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from interest.ingest import EventInput
from service.fields import (
    AtMost,
    Entries,
    FiniteFloat,
    Id,
    JsonObject,
    K,
    NonEmptyText,
    PathId,
    QueryK,
    QueryList,
    QueryTimestamp,
    Text,
    Timestamp,
    text,
)
from service.recommend_params import RecommendBody
from service.recommending import MAX_EXAMPLES, Example
from store.items import ItemInput

#: Events may be stamped at most this far ahead of the server clock (clock skew allowance).
MAX_FUTURE_S = 86_400.0
#: Bound on an event's value: it scales the event weight, and profiles must stay finite.
MAX_EVENT_VALUE = 1e6
MAX_EVENT_TYPE_LENGTH = 64
MAX_RECOMM_ID_LENGTH = 64
MAX_QUERY_LENGTH = 1_000
MAX_EXAMPLE_WEIGHT = 1e6
#: Bound on each number of an example's vector: the session profile sums weight x vector and
#: the search casts it to float32 (whose largest value is ~3.4e38); both must stay finite.
MAX_VECTOR_COMPONENT = 1e6


EventType = text(max_length=MAX_EVENT_TYPE_LENGTH, non_empty=True)
RecommId = text(max_length=MAX_RECOMM_ID_LENGTH, non_empty=True)
Query = text(max_length=MAX_QUERY_LENGTH, non_empty=True)


class Entry(BaseModel):
    # Unknown fields are refused: a typo should not pass silently. (Class docstrings of the
    # models are the descriptions clients read in /openapi.json and /docs.)

    model_config = ConfigDict(extra="forbid")


# -- requests --------------------------------------------------------------------------------
class ItemEntry(Entry):
    """One catalogue item; `id` is the caller's (no "/": URL paths name it)."""

    id: PathId
    title: NonEmptyText
    text: Text | None = Field(None, description="Embedded with the title")
    categories: list[Text] | None = None
    properties: JsonObject | None = None
    available: bool = True
    expires_at: Timestamp | None = None

    def to_input(self) -> ItemInput:
        return ItemInput(
            external_id=self.id,
            title=self.title,
            text=self.text,
            categories=list(self.categories or []),
            properties=dict(self.properties or {}),
            available=self.available,
            expires_at=self.expires_at,
        )


class EventEntry(Entry):
    """One event; an unknown item or event type rejects the entry, not the batch."""

    id: Id = Field(description="Idempotency key: a stored id is a duplicate")
    user_id: PathId
    item_id: Id
    type: EventType = Field(description="One of the types in DRIFTREC_EVENT_WEIGHTS")
    value: Annotated[FiniteFloat, Field(ge=-MAX_EVENT_VALUE, le=MAX_EVENT_VALUE)] | None = None
    timestamp: Timestamp = Field(description="At most one day in the future")
    recomm_id: RecommId | None = Field(
        None, description="The recommendation answer the event came from (attribution)"
    )

    @field_validator("timestamp")
    @classmethod
    def _not_far_ahead(cls, timestamp: datetime, info: ValidationInfo) -> datetime:
        now = (info.context or {})["now"]
        if timestamp.timestamp() > now + MAX_FUTURE_S:
            raise PydanticCustomError("future", "is more than one day in the future")
        return timestamp

    def to_input(self) -> EventInput:
        return EventInput(
            event_id=self.id,
            user_id=self.user_id,
            item_id=self.item_id,
            type=self.type,
            timestamp=self.timestamp,
            value=self.value,
            recomm_id=self.recomm_id,
        )


class ItemsBody(BaseModel):
    """All or nothing: with any bad entry nothing is written and each one is listed by index
    in `error.details`."""

    # Entries are validated one by one (`contract.entry`) so that each bad one is reported.

    items: Annotated[list[Any], Entries(ItemEntry), AtMost("max_batch_size")]


class EventsBody(BaseModel):
    """Each entry stands alone: good ones are accepted, bad ones listed in `rejected`."""

    # Entries are validated one by one (`contract.entry`).

    events: Annotated[list[Any], Entries(EventEntry), AtMost("max_batch_size")]


class SearchBody(BaseModel):
    query: Query
    k: K = 10
    categories: list[Text] = Field([], description="Only items in one of these categories")


class SimilarQuery(BaseModel):
    k: QueryK = 10
    category: QueryList = Field([], description="Only items in these categories")


class NextPageQuery(BaseModel):
    k: QueryK | None = Field(None, description="Page size (default: the first request's k)")


class StatsQuery(BaseModel):
    since: QueryTimestamp | None = Field(None, description="Only answers made since")


class MergeBody(Entry):
    from_: Id = Field(alias="from", description="The anonymous user, deleted afterwards")
    into: PathId = Field(description="The user who keeps the events")


class ExampleInput(Entry):
    """Exactly one of item_id, text, vector; weight may be negative."""

    item_id: Id | None = None
    text: Query | None = None
    vector: (
        list[Annotated[FiniteFloat, Field(ge=-MAX_VECTOR_COMPONENT, le=MAX_VECTOR_COMPONENT)]]
        | None
    ) = None
    weight: Annotated[FiniteFloat, Field(ge=-MAX_EXAMPLE_WEIGHT, le=MAX_EXAMPLE_WEIGHT)] = 1.0

    @model_validator(mode="after")
    def _exactly_one(self) -> ExampleInput:
        given = [v for v in (self.item_id, self.text, self.vector) if v is not None]
        if len(given) != 1:
            raise PydanticCustomError("one_of", "needs exactly one of item_id, text, vector")
        return self

    def to_example(self) -> Example:
        return Example(weight=self.weight, item_id=self.item_id, text=self.text, vector=self.vector)


class ExamplesBody(RecommendBody):
    """Weighted examples instead of a user, with the controls of RecommendBody."""

    examples: Annotated[list[ExampleInput], Field(min_length=1, max_length=MAX_EXAMPLES)]


# -- responses -------------------------------------------------------------------------------
ServedBy = Literal["correction_network", "decayed_blend", "cold_start"]


class RankedItem(BaseModel):
    id: str
    title: str
    score: float


class Ranked(BaseModel):
    items: list[RankedItem]
    index_version: int | None
    model_version: int | None


class SimilarAnswer(Ranked):
    item_id: str


class SearchAnswer(Ranked):
    query: str


class Because(BaseModel):
    id: str
    title: str
    weight: float = Field(description="Event weight x recency decay")
    similarity: float
    contribution: float = Field(description="weight x similarity")


class Explanation(BaseModel):
    served_by: ServedBy
    because: list[Because]


class RecommendedItem(BaseModel):
    id: str
    title: str
    score: float
    properties: dict[str, Any] | None = Field(None, description="The `fields` asked for")
    categories: list[str] | None = None
    explanation: Explanation | None = None


class Skipped(BaseModel):
    index: int
    item_id: str
    reason: str


class Recommendations(BaseModel):
    recomm_id: str = Field(description="Continue with GET /v1/recommendations/{recomm_id}/next")
    user_id: str | None = None
    items: list[RecommendedItem]
    skipped: list[Skipped] | None = Field(
        None, description="Anonymous requests: examples whose item is unknown"
    )
    index_version: int | None
    model_version: int | None
    strategy: Literal["personalized", "cold_start"]
    served_by: ServedBy
    experiment: str | None = Field(
        description="The running experiment (`driftrec experiment start`), if any"
    )
    arm: Literal["control", "treatment"] | None = Field(
        description="The experiment arm that served this user; null outside one"
    )


class Item(BaseModel):
    id: str
    title: str
    text: str | None
    categories: list[str]
    properties: dict[str, Any]
    available: bool
    expires_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    has_vector: bool


class Upserted(BaseModel):
    upserted: int
    embedded: int
    index_version: int | None


class RejectedEntry(BaseModel):
    index: int
    error: str


class Ingested(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[RejectedEntry]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[RejectedEntry] | None = None


class Error(BaseModel):
    """Every error answer."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorBody


class RecentItem(BaseModel):
    id: str
    title: str
    timestamp: str
    type: str


class UserSummary(BaseModel):
    user_id: str
    event_count: int
    last_event_at: str | None
    recent_items: list[RecentItem]


class Merged(BaseModel):
    from_: str = Field(alias="from")
    into: str
    merged: bool = Field(description="False when `from` no longer exists")
    moved_events: int
    event_count: int


class StatsRow(BaseModel):
    model_version: int | None
    experiment: str | None
    arm: str | None
    answers: int
    items_shown: int
    events: dict[str, int] = Field(description="Attributed events by type")
    positive_events: int
    click_through: float | None = Field(description="positive_events / items_shown")


class Stats(BaseModel):
    since: str | None
    by_model_version: list[StatsRow]


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    index_version: int | None
    index_items: int


class NotReady(BaseModel):
    status: str
    error: dict[str, Any]


class Document(BaseModel):
    """The OpenAPI document itself."""

    openapi: str
