"""The wire contract: request, result and dead-letter messages (exported to `schemas/`)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from .errors import RequestError

Scalar = str | int | float | bool | None
FeatureValue = Scalar | list[Scalar]


class Limits(BaseModel):
    """Size limits a deployment enforces beyond the schema (see Settings)."""

    max_candidates: int = 100
    max_history: int = 200
    max_features: int = 64
    max_payload_bytes: int = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Item(_Strict):
    item_id: str = Field(min_length=1, max_length=256)
    score: float | None = Field(None, description="the upstream ranker's score")
    features: dict[str, FeatureValue] = Field(default_factory=dict)


class HistoryItem(_Strict):
    item_id: str = Field(min_length=1, max_length=256)
    features: dict[str, FeatureValue] = Field(default_factory=dict)


class User(_Strict):
    user_id: str = Field(min_length=1, max_length=256)
    features: dict[str, FeatureValue] = Field(default_factory=dict)
    history: list[HistoryItem] = Field(default_factory=list)


class AspectConfig(_Strict):
    """Which item feature an aspect node looks at; `split_at` makes a numeric attribute two groups."""

    attribute: str = Field(min_length=1)
    split_at: float | None = None


class Options(_Strict):
    max_steps: int | None = Field(None, ge=1, le=50)
    deadline_ms: int | None = Field(None, ge=100, le=3_600_000)


class RerankRequest(_Strict):
    request_id: str = Field(min_length=1, max_length=256, pattern=r"\S")
    goal: str = Field(min_length=1, max_length=2000, pattern=r"\S")
    user: User
    candidates: list[Item] = Field(min_length=2)
    aspects: dict[str, AspectConfig] = Field(default_factory=dict)
    options: Options = Field(default_factory=Options)

    @model_validator(mode="after")
    def _check_limits(self, info: ValidationInfo) -> RerankRequest:
        limits = (info.context or {}).get("limits") or Limits()
        if len(self.candidates) > limits.max_candidates:
            raise ValueError(
                f"candidates: {len(self.candidates)} given, at most {limits.max_candidates} allowed"
            )
        seen: set[str] = set()
        for item in self.candidates:
            if item.item_id in seen:
                raise ValueError(f"candidates: duplicate item_id {item.item_id!r}")
            seen.add(item.item_id)
        if len(self.user.history) > limits.max_history:
            raise ValueError(
                f"user.history: {len(self.user.history)} items, at most {limits.max_history}"
            )
        maps = [("user.features", self.user.features)]
        maps += [(f"candidates[{i}].features", c.features) for i, c in enumerate(self.candidates)]
        maps += [(f"user.history[{i}].features", h.features) for i, h in enumerate(self.user.history)]
        for where, features in maps:
            if len(features) > limits.max_features:
                raise ValueError(f"{where}: {len(features)} keys, at most {limits.max_features}")
        for name, aspect in self.aspects.items():
            if not any(aspect.attribute in c.features for c in self.candidates):
                raise ValueError(
                    f"aspects.{name}.attribute: no candidate has the feature {aspect.attribute!r}"
                )
        return self


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


Status = Literal["ok", "degraded", "failed"]


class RepairSummary(BaseModel):
    """Model answers parsed, how many were a permutation as given, and what repair did."""

    answers: int = 0
    permutations: int = 0
    appended: int = 0
    duplicates: int = 0
    unknown: int = 0
    ties: int = 0


class RerankResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    status: Status
    ranking: list[str] = Field(description="every candidate item_id exactly once")
    path: list[str] = Field(description="visited nodes in order, backward and stop included")
    llm_calls: int
    usage: Usage
    model: str
    prompt_version: str
    latency_ms: int
    reason: str | None = Field(description="why degraded or failed, else null")
    completed_at: datetime
    policy: str = Field("llm", description="llm, heuristic, or llm+heuristic after a fallback")
    replay_of: str | None = Field(None, description="the original request_id of a replay")
    attempts: int = Field(1, description="how many times a worker took the session up (1: it was "
                          "never resumed); latency_ms counts from receipt across all of them")
    repair: RepairSummary | None = Field(None, description="how far the model's answers were from "
                                         "a permutation over the walk; null without model answers")


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any = None


class Source(BaseModel):
    topic: str
    partition: int | None = None
    offset: int | None = None


class DeadLetter(BaseModel):
    error: ErrorInfo
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    source: Source
    request_id: str | None = None
    failed_at: datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_request(raw: bytes | str, limits: Limits | None = None) -> RerankRequest:
    """Decode and validate one message; every failure is a RequestError naming the field."""
    limits = limits or Limits()
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > limits.max_payload_bytes:
        raise RequestError(
            "payload_too_large",
            f"payload is {len(data)} bytes, at most {limits.max_payload_bytes} allowed",
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError("not_utf8", f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RequestError("not_json", f"payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RequestError("schema", "payload must be a JSON object")
    try:
        return RerankRequest.model_validate(obj, context={"limits": limits})
    except ValidationError as exc:
        raise RequestError("schema", _describe(exc), _error_details(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg)
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _error_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in err["loc"]], "type": err["type"], "msg": err["msg"]}
        for err in exc.errors()[:20]
    ]


def request_id_of(raw: bytes) -> str | None:
    """Best effort: the request_id of an invalid payload, for the dead letter."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    rid = obj.get("request_id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and rid else None


def dead_letter(raw: bytes, error: RequestError, source: Source) -> DeadLetter:
    try:
        payload, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return DeadLetter(
        error=ErrorInfo(code=error.code, message=error.message, details=error.details),
        payload=payload,
        payload_encoding=encoding,
        source=source,
        request_id=request_id_of(raw),
        failed_at=utcnow(),
    )


MESSAGES: dict[str, type[BaseModel]] = {
    "rerank-request": RerankRequest,
    "rerank-result": RerankResult,
    "dead-letter": DeadLetter,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each message, as committed under `schemas/`."""
    out = {}
    for name, model in MESSAGES.items():
        schema = model.model_json_schema(mode="validation" if model is RerankRequest else "serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"{name}.schema.json"
        out[name] = schema
    return out
