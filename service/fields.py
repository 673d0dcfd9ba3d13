"""The field types the API's pydantic models are built from: each states its rule once, for
validation and for the OpenAPI document (`service.contract` turns both into the API's shapes).

Bodies are validated in strict mode (a JSON ``"3"`` is not an integer, ``true`` not a number);
query parameters arrive as text, so their types (``Query*``) parse the text first. Custom
checks raise `PydanticCustomError` with a message that reads after the field name (``"user_id"
+ " must not contain NUL characters"``); `service.contract` puts the two together.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainValidator,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError, core_schema

from store.models import EXTERNAL_ID_LENGTH
from store.types import path_id_problem, unstorable_text

#: The JSON-schema key a settings-bound limit leaves in a schema; `service.contract` replaces it
#: with ``maximum``/``maxItems`` from the app's settings.
SETTING_LIMIT_KEY = "x-setting-limit"
#: Where the document keeps the models' schemas.
REF_TEMPLATE = "#/components/schemas/{model}"


@dataclass(frozen=True)
class AtMost:
    """At most the value of a `Settings` field (``max_k``, ``max_batch_size``), which the
    validation context carries; on a list, at most that many entries, else a 413 (batch)."""

    setting: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {**handler(schema), SETTING_LIMIT_KEY: self.setting}

    def _check(self, value: Any, info: ValidationInfo) -> Any:
        limit = (info.context or {})[self.setting]
        if isinstance(value, list):
            if len(value) > limit:
                raise PydanticCustomError(
                    "batch_too_large",
                    "holds {size} entries in one request; the limit is {limit} "
                    "(DRIFTREC_{setting})",
                    {"size": len(value), "limit": limit, "setting": self.setting.upper()},
                )
        elif value > limit:
            raise PydanticCustomError(
                "at_most",
                "must be at most {limit}, got {value}",
                {"limit": limit, "value": shown(value)},
            )
        return value


@dataclass(frozen=True)
class Entries:
    """A list whose entries the endpoint validates one by one (so each bad one is reported by
    index): the request model checks only that it is a list; the document shows ``model``."""

    model: type

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.list_schema(core_schema.any_schema())

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        # `service.contract.components` adds the model to the components it refers to.
        return {"type": "array", "items": {"$ref": REF_TEMPLATE.format(model=self.model.__name__)}}


# -- text ------------------------------------------------------------------------------------
def _storable(value: str) -> str:
    """Text every database can store: no NUL characters, no lone surrogates. (Pydantic refuses
    a surrogate in a plain ``str`` field but lets one through inside a list, so check here.)"""
    problem = unstorable_text(value)
    if problem is not None:
        raise PydanticCustomError(*problem)
    return value


def text(*, max_length: int | None = None, non_empty: bool = False) -> Any:
    """Storable text of at most ``max_length`` characters, with a non-space one if
    ``non_empty``. The constraints sit on the string itself, before the NUL check, so that
    pydantic applies them natively and they appear in the document."""
    if non_empty:
        constraints = Field(min_length=1, max_length=max_length, pattern=r"\S")
    else:
        constraints = Field(max_length=max_length)
    return Annotated[StrictStr, constraints, AfterValidator(_storable)]


#: Any text a database can store.
Text = Annotated[StrictStr, AfterValidator(_storable)]
#: Text with at least one non-space character.
NonEmptyText = text(non_empty=True)
#: A caller's id (item, user, event): non-empty, at most the column's length.
Id = text(max_length=EXTERNAL_ID_LENGTH, non_empty=True)


def _path_segment(value: str) -> str:
    problem = path_id_problem(value)
    if problem is not None:
        raise PydanticCustomError("path_id", problem)
    return value


#: The id of an item or a user, which URL paths name (`/v1/items/<id>`, `/v1/users/<id>`): an
#: `Id` without "/", which a server decodes from %2F into a separator before routing, so such
#: an item or user could be created but never read, recommended to or erased.
PathId = Annotated[Id, AfterValidator(_path_segment)]


# -- numbers ---------------------------------------------------------------------------------
def float_range(value: int) -> bool:
    """Whether an integer converts to a float: JSON allows any number of digits, but one past
    ~1.8e308 cannot be compared with a float or stored as one (``OverflowError``)."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def shown(value: object) -> object:
    """``value`` for a message: an integer of hundreds of digits as its order of magnitude."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"about {'-' if value < 0 else ''}1e{int(value.bit_length() * math.log10(2))}"
    return value


#: A JSON number that is neither NaN nor infinite.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
#: How many items to answer: 1 up to ``DRIFTREC_MAX_K``.
K = Annotated[int, Field(ge=1, description="How many items to answer"), AtMost("max_k")]


# -- timestamps ------------------------------------------------------------------------------
def to_datetime(raw: object) -> datetime:
    """ISO 8601 (a time without a zone is taken as UTC) or epoch seconds -> aware UTC datetime."""
    if isinstance(raw, datetime):
        return raw if raw.tzinfo is not None else raw.replace(tzinfo=UTC)
    if isinstance(raw, bool):
        raise PydanticCustomError("timestamp_type", "must be an ISO 8601 string or epoch seconds")
    if isinstance(raw, int | float):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise PydanticCustomError("not_finite", "must be a finite number of epoch seconds")
        try:  # an integer past the float range overflows too
            return datetime.fromtimestamp(raw, UTC)
        except (OverflowError, OSError, ValueError):
            raise PydanticCustomError(
                "timestamp_range", "is out of range: {value}", {"value": shown(raw)}
            ) from None
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise PydanticCustomError(
                "timestamp_parsing",
                "is not an ISO 8601 timestamp: {value}",
                {"value": repr(raw[:64])},
            ) from None
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC)
        except (OverflowError, ValueError):
            raise PydanticCustomError(
                "timestamp_range", "is out of range: {value}", {"value": repr(raw[:64])}
            ) from None
    raise PydanticCustomError("timestamp_type", "must be an ISO 8601 string or epoch seconds")


TIMESTAMP_SCHEMA = {
    "description": "ISO 8601 (no zone means UTC) or epoch seconds",
    "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
}
#: ISO 8601 text or epoch seconds, as an aware UTC datetime.
Timestamp = Annotated[datetime, PlainValidator(to_datetime), WithJsonSchema(TIMESTAMP_SCHEMA)]


# -- JSON values -----------------------------------------------------------------------------
MAX_JSON_DEPTH = 32


def _plain_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise PydanticCustomError(
            "json_depth", "is nested deeper than {depth} levels", {"depth": MAX_JSON_DEPTH}
        )
    if isinstance(value, str):
        _storable(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("not_finite", "must not contain NaN or infinite numbers")
    elif isinstance(value, int) and not float_range(value):
        raise PydanticCustomError(
            "number_range", "must not contain integers beyond the range of a float (~1.8e308)"
        )
    elif isinstance(value, dict):
        for key, inner in value.items():
            _storable(key)
            _plain_json(inner, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            _plain_json(inner, depth + 1)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _plain_json(value)
    return value


#: A JSON object PostgreSQL accepts and filters can compare: finite numbers within the float
#: range, storable strings, bounded nesting.
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


# -- query parameters (text) -----------------------------------------------------------------
_QUERY_INT = re.compile(r"-?[0-9]+")  # ASCII only: str.isdigit() and int() take any script's


def query_int(raw: object) -> object:
    """Text of ASCII digits with an optional minus -> int; the field's bounds say the rest."""
    if isinstance(raw, str):
        text = raw.strip()
        if not _QUERY_INT.fullmatch(text):
            raise PydanticCustomError(
                "query_int", "must be an integer, got {value}", {"value": repr(raw[:64])}
            )
        try:
            return int(text)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise PydanticCustomError(
                "query_int", "is out of range, got {value}", {"value": repr(raw[:64])}
            ) from None
    return raw


def query_number(raw: object) -> object:
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            raise PydanticCustomError(
                "query_number", "must be a number, got {value}", {"value": repr(raw[:64])}
            ) from None
    return raw


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def query_flag(raw: object) -> object:
    if isinstance(raw, str):
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise PydanticCustomError(
            "query_flag", "must be true or false, got {value}", {"value": repr(raw[:64])}
        )
    return raw


def split_list(raw: object) -> object:
    """A list parameter may repeat and each value may be comma-separated; blanks are dropped."""
    if not isinstance(raw, list):
        return raw
    parts = (part.strip() for value in raw for part in str(value).split(","))
    return list(dict.fromkeys(part for part in parts if part))  # first occurrence, in order


QueryK = Annotated[K, BeforeValidator(query_int)]
QueryFlag = Annotated[bool, BeforeValidator(query_flag)]
QueryNumber = Annotated[FiniteFloat, BeforeValidator(query_number)]
#: Repeat the parameter or comma-separate values.
QueryList = Annotated[list[Text], BeforeValidator(split_list)]
QueryTimestamp = Annotated[
    datetime,
    PlainValidator(lambda raw: to_datetime(query_number(raw) if _is_number(raw) else raw)),
    WithJsonSchema({"type": "string", "description": TIMESTAMP_SCHEMA["description"]}),
]


def _is_number(raw: object) -> bool:
    try:
        float(str(raw))
    except ValueError:
        return False
    return True
