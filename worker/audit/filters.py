"""The session filters shared by `trace list`, `replay`, `export`, `submit --from-store` and the
audit API, validated once here so every surface accepts and refuses the same inputs.

Cursors are opaque to clients but only encode the keyset position (received_at, id) of the last
row returned, so paging stays correct and cheap on stores of any size while rows are added.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..engine.nodes import node_names
from ..status import Status as _S

MAX_PAGE = 200
DEFAULT_PAGE = 50
MAX_TOP_K = 100
DEFAULT_TOP_K = 10
MAX_ROW_ID = 2**63 - 1  # PostgreSQL bigint

Status = Literal[_S.PENDING, _S.RUNNING, _S.OK, _S.DEGRADED, _S.FAILED]  # worker.status.Status
Order = Literal["desc", "asc"]
Text = Field(None, min_length=1, max_length=256)


class FilterError(ValueError):
    """An input the queries refuse; the message names the parameter."""


class TraceFilters(BaseModel):
    """Which sessions to select. Every field narrows the selection (AND)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_ids: tuple[str, ...] = Field((), max_length=1000)
    since: datetime | None = Field(None, description="received at or after (ISO 8601)")
    until: datetime | None = Field(None, description="received before (ISO 8601)")
    user: str | None = Text
    status: Status | None = None
    node: str | None = Field(None, description="the walk visited this node")
    goal: str | None = Field(
        None, min_length=1, max_length=256, description="case-insensitive substring of the goal"
    )
    model: str | None = Text
    prompt_version: str | None = Text
    item: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="this item ended in the top `top_k` of the final ranking",
    )
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K)
    replay_of: str | None = Text
    replays: Literal["include", "exclude", "only"] = "include"

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        """Naive times are read as UTC: the store keeps UTC and auditors paste log timestamps."""
        return None if value is None else in_utc(value)

    @field_validator("node")
    @classmethod
    def _known_node(cls, value: str | None) -> str | None:
        if value is not None and value not in node_names():
            raise ValueError(f"unknown node {value!r}; known: {', '.join(node_names())}")
        return value

    @field_validator("request_ids")
    @classmethod
    def _ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v or len(v) > 256 for v in value):
            raise ValueError("request ids are 1 to 256 characters")
        return value

    @model_validator(mode="after")
    def _item_k(self) -> TraceFilters:
        if self.top_k is not None and self.item is None:
            raise ValueError("top_k needs item")
        if self.item is not None and self.top_k is None:
            return self.model_copy(update={"top_k": DEFAULT_TOP_K})
        return self


def in_utc(value: datetime) -> datetime:
    """The time in UTC; a time that is not a UTC instant between years 1 and 9999 is refused."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("out of range: must be between years 1 and 9999 in UTC") from None


def parse_filters(**values: object) -> TraceFilters:
    """TraceFilters from loosely typed inputs (CLI options, query strings); FilterError on misuse."""
    from pydantic import ValidationError

    clean = {k: v for k, v in values.items() if v is not None and v != () and v != ""}
    try:
        return TraceFilters.model_validate(clean)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "filters"
        raise FilterError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def check_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise FilterError(f"limit: must be between 1 and {MAX_PAGE}")
    return limit


def encode_cursor(received_at: datetime, row_id: int, order: Order) -> str:
    payload = orjson.dumps([received_at.isoformat(), row_id, order])
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(cursor: str, order: Order) -> tuple[datetime, int]:
    """The keyset position a cursor encodes; a cursor only pages in the order it was made for."""
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id, made_for = orjson.loads(raw)
        if not isinstance(at, str) or type(row_id) is not int or not 0 <= row_id <= MAX_ROW_ID:
            raise ValueError("bad fields")
        if made_for not in ("asc", "desc"):
            raise ValueError("bad fields")
        when = in_utc(datetime.fromisoformat(at))
    except (ValueError, TypeError, OverflowError, binascii.Error, orjson.JSONDecodeError):
        raise FilterError("cursor: not a cursor this API returned") from None
    if made_for != order:
        raise FilterError(f"cursor: made for order={made_for}, not order={order}")
    return when, row_id
