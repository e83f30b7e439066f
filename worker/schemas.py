"""The wire contract: request, result and dead-letter messages (exported to `schemas/`)."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import RequestError
from .status import ResultStatus

# Characters a request may not hold (README, "Text in requests"). PostgreSQL cannot store U+0000
# and the others are invisible or break a prompt's lines. Free text (goal, string feature values)
# keeps tab, LF and CR (prompts normalise them); identifiers and feature keys refuse them too, and
# also U+2028/U+2029, so every id prints on one line.
TEXT_FORBIDDEN = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff"
ID_FORBIDDEN = r"\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff"
_TEXT_BAD = re.compile(f"[{TEXT_FORBIDDEN}]")
_ID_BAD = re.compile(f"[{ID_FORBIDDEN}]")


def forbidden_char(value: str, bad: re.Pattern[str]) -> str | None:
    """How the first refused character of `value` is named in an error, or None."""
    found = bad.search(value)
    if found is None:
        return None
    return f"the control character U+{ord(found.group()):04X} at index {found.start()}"


def _refuse(bad: re.Pattern[str], what: str) -> Any:
    def check(value: str) -> str:
        found = forbidden_char(value, bad)
        if found:
            raise PydanticCustomError("control_character", f"{what} holds {found}")
        return value

    return check


def _check_features(features: dict[str, Any]) -> dict[str, Any]:
    """Keys follow the identifier rule, string values the free-text rule (one error naming the key)."""
    for key, value in features.items():
        found = forbidden_char(key, _ID_BAD)
        if found:
            raise PydanticCustomError("control_character", f"the key {key!r} holds {found}")
        for v in value if isinstance(value, list) else [value]:
            found = forbidden_char(v, _TEXT_BAD) if isinstance(v, str) else None
            if found:
                raise PydanticCustomError("control_character", f"the value of {key!r} holds {found}")
    return features


def _none_of(forbidden: str) -> dict[str, Any]:
    """JSON Schema for "holds none of these characters": `not` a search, no anchors, so every
    regex dialect (ECMA, Python's `$` before a final newline) reads it the same way."""
    return {"not": {"pattern": f"[{forbidden}]"}}


def _schema(forbidden: str, **extra: Any) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", **_none_of(forbidden), **extra})


Key = Annotated[str, AfterValidator(_refuse(_ID_BAD, "a key")), _schema(ID_FORBIDDEN)]


def _ident(max_length: int | None = 256, nonblank: bool = False) -> Any:
    extra: dict[str, Any] = {"minLength": 1}
    if max_length is not None:
        extra["maxLength"] = max_length
    if nonblank:
        extra["pattern"] = r"\S"
    return Annotated[
        str,
        Field(min_length=1, max_length=max_length, pattern=r"\S" if nonblank else None),
        AfterValidator(_refuse(_ID_BAD, "an identifier")),
        _schema(ID_FORBIDDEN, **extra),
    ]


if TYPE_CHECKING:  # Annotated[str, ...] built at run time: a str to a type checker
    Ident = str
    RequestId = str
    Attribute = str
else:
    Ident = _ident()
    RequestId = _ident(256, nonblank=True)
    Attribute = _ident(None)
Scalar = str | int | float | bool | None
FeatureValue = Scalar | list[Scalar]
_SCALAR_SCHEMA = {
    "anyOf": [
        {"type": "string", **_none_of(TEXT_FORBIDDEN)},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ]
}
Features = Annotated[
    dict[str, FeatureValue],
    AfterValidator(_check_features),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": _none_of(ID_FORBIDDEN),
            "additionalProperties": {"anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA}]},
        }
    ),
]


class Limits(BaseModel):
    """Size limits a deployment enforces beyond the schema (see Settings)."""

    max_candidates: int = 100
    max_history: int = 200
    max_features: int = 64
    max_payload_bytes: int = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Item(_Strict):
    item_id: Ident
    score: float | None = Field(None, description="the upstream ranker's score")
    features: Features = Field(default_factory=dict)


class HistoryItem(_Strict):
    item_id: Ident
    features: Features = Field(default_factory=dict)


class User(_Strict):
    user_id: Ident
    features: Features = Field(default_factory=dict)
    history: list[HistoryItem] = Field(default_factory=list)


class AspectConfig(_Strict):
    """Which item feature an aspect node looks at; `split_at` makes a numeric attribute two groups."""

    attribute: Attribute
    split_at: float | None = None


class Options(_Strict):
    max_steps: int | None = Field(None, ge=1, le=50)
    deadline_ms: int | None = Field(None, ge=100, le=3_600_000)


class RerankRequest(_Strict):
    request_id: RequestId
    goal: Annotated[
        str,
        Field(min_length=1, max_length=2000, pattern=r"\S"),
        AfterValidator(_refuse(_TEXT_BAD, "the goal")),
        _schema(TEXT_FORBIDDEN, pattern=r"\S", minLength=1, maxLength=2000),
    ]
    user: User
    candidates: list[Item] = Field(min_length=2)
    aspects: dict[Key, AspectConfig] = Field(default_factory=dict)
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
            raise ValueError(f"user.history: {len(self.user.history)} items, at most {limits.max_history}")
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


Status = ResultStatus  # ok, degraded or failed: worker.status.Status, values unchanged on the wire


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
    attempts: int = Field(
        1,
        description="how many times a worker took the session up (1: it was "
        "never resumed); latency_ms counts from receipt across all of them",
    )
    repair: RepairSummary | None = Field(
        None,
        description="how far the model's answers were from "
        "a permutation over the walk; null without model answers",
    )


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
    payload: str = Field(description="the original message, or its first bytes when cut")
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_truncated: bool = Field(False, description="true when `payload` is only a prefix")
    payload_sha256: str | None = Field(None, description="sha256 of the whole original (when cut)")
    payload_bytes: int | None = Field(None, description="size of the whole original (when cut)")
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
        code = (
            "control_character" if any(e["type"] == "control_character" for e in exc.errors()) else "schema"
        )
        raise RequestError(code, _describe(exc), _error_details(exc)) from None


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


DLQ_PAYLOAD_MAX_BYTES = 256 * 1024
_MESSAGE_MAX_CHARS = 2000


def canonical_hash(request: RerankRequest) -> str:
    """sha256 of the request's content, independent of key order and whitespace: what makes
    two messages with one request_id "the same request"."""
    body = orjson.dumps(request.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def dead_letter(
    raw: bytes, error: RequestError, source: Source, max_payload_bytes: int = DLQ_PAYLOAD_MAX_BYTES
) -> DeadLetter:
    """The DLQ record; a payload over `max_payload_bytes` (after base64) keeps only a prefix, its
    sha256 and size, so the record always fits under the producer's message limit."""
    try:
        raw.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    keep = max_payload_bytes if utf8 else max_payload_bytes // 4 * 3
    cut = len(raw) > keep
    prefix = raw[:keep]
    if utf8:
        payload = prefix.decode("utf-8", "ignore")  # a multi-byte character cut at the end
    else:
        payload = base64.b64encode(prefix).decode("ascii")
    rid = request_id_of(raw) if len(raw) <= 4 * max_payload_bytes else None
    return DeadLetter(
        error=ErrorInfo(
            code=error.code,
            message=_clip(error.message, _MESSAGE_MAX_CHARS),
            details=_clip_details(error.details),
        ),
        payload=payload,
        payload_encoding="utf-8" if utf8 else "base64",
        payload_truncated=cut,
        payload_sha256=hashlib.sha256(raw).hexdigest() if cut else None,
        payload_bytes=len(raw) if cut else None,
        source=source,
        request_id=_clip(rid, 256) if rid else None,
        failed_at=utcnow(),
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more chars)"


def _clip_details(details: Any, limit: int = 16_000) -> Any:
    """Error details are kept as they are unless their JSON is large; then as clipped text."""
    if details is None:
        return None
    text = orjson.dumps(details, default=str).decode()
    return details if len(text) <= limit else _clip(text, limit)


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
