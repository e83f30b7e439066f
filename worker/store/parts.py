"""Prompt parts stored once: what every step of a session sends alike, kept by content hash.

The system message is byte-identical across the steps of a session by design, and a node's
response_format repeats across steps and sessions; stored in full with each call they were most of
a step's bytes. A step now keeps its calls with those parts replaced by "sha256:<hex>" and the
parts themselves sit once in `prompt_parts`, keyed by the SHA-256 of their JSON; fields still at
their default (no error, no retries, ...) are left out of the stored call. Reading joins the parts
back and fills the defaults in, so every prompt comes back as sent. (What is left is then stored
deflated, see calls_codec; every function here reads that form too.) Steps stored before keep full
messages and read as they are: a reference is only ever a string, which no chat message or
response_format is (they are objects).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..engine.steps import HTTPAttempt, LLMCall
from .calls_codec import REF, inflate_calls, is_ref
from .tables import prompt_parts

SHARED_ROLES = ("system",)
CALL_DEFAULTS: dict[str, Any] = {
    name: f.get_default(call_default_factory=True)
    for name, f in LLMCall.model_fields.items()
    if not f.is_required()
}
ATTEMPT_DEFAULTS: dict[str, Any] = {
    name: f.get_default(call_default_factory=True)
    for name, f in HTTPAttempt.model_fields.items()
    if not f.is_required()
}


def part_hash(body: Any) -> str:
    """SHA-256 (hex) of the part's JSON with sorted keys: the same part always has the same key."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _lean(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}


def _filled(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **{k: (list(v) if isinstance(v, list) else v) for k, v in defaults.items() if k not in values},
        **values,
    }


def split_calls(calls: Sequence[Mapping[str, Any]], parts: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls with system messages and response formats replaced by references; the parts
    referenced are added to `parts` (hash -> body)."""

    def ref(body: Any) -> str:
        key = part_hash(body)
        parts.setdefault(key, body)
        return REF + key

    out = []
    for call in calls:
        lean = _lean(call, CALL_DEFAULTS)
        if isinstance(call.get("attempts"), list):
            lean["attempts"] = [
                _lean(a, ATTEMPT_DEFAULTS) if isinstance(a, dict) else a for a in call["attempts"]
            ]
        messages = call.get("messages")
        if isinstance(messages, list):
            lean["messages"] = [
                ref(m) if isinstance(m, dict) and m.get("role") in SHARED_ROLES else m for m in messages
            ]
        if isinstance(call.get("response_format"), dict):
            lean["response_format"] = ref(call["response_format"])
        out.append(lean)
    return out


def refs_of(calls: Any) -> set[str]:
    """The part hashes stored calls refer to (none for steps stored in full)."""
    found: set[str] = set()
    for call in inflate_calls(calls) or ():
        if not isinstance(call, dict):
            continue
        for m in call.get("messages") or ():
            if is_ref(m):
                found.add(m.removeprefix(REF))
        if is_ref(call.get("response_format")):
            found.add(call["response_format"].removeprefix(REF))
    return found


def join_calls(calls: Any, parts: Mapping[str, Any]) -> Any:
    """Stored calls with every reference replaced by its part and every left-out field at its
    default: the calls as they were recorded (a call stored in full gains only fields added to
    LLMCall since, at their defaults). Deflated calls are inflated first (calls_codec)."""
    calls = inflate_calls(calls)
    if not isinstance(calls, list):
        return calls
    out = []
    for call in calls:
        if not isinstance(call, dict):
            out.append(call)
            continue
        whole = _filled(call, CALL_DEFAULTS)
        if isinstance(call.get("attempts"), list):
            whole["attempts"] = [
                _filled(a, ATTEMPT_DEFAULTS) if isinstance(a, dict) else a for a in call["attempts"]
            ]
        messages = call.get("messages")
        if isinstance(messages, list):
            whole["messages"] = [_part(m, parts) for m in messages]
        whole["response_format"] = _part(whole["response_format"], parts)
        out.append(whole)
    return out


def _part(value: Any, parts: Mapping[str, Any]) -> Any:
    if not is_ref(value):
        return value
    key = value.removeprefix(REF)
    try:
        return parts[key]
    except KeyError:
        raise LookupError(f"prompt part {key} is not in prompt_parts") from None


async def load_parts(conn: AsyncConnection, hashes: Iterable[str]) -> dict[str, Any]:
    """The parts with these hashes, in one query."""
    wanted = sorted(set(hashes))
    if not wanted:
        return {}
    rows = await conn.execute(
        select(prompt_parts.c.hash, prompt_parts.c.body).where(prompt_parts.c.hash.in_(wanted))
    )
    return {h: body for h, body in rows.all()}


async def joined(conn: AsyncConnection, calls_by_step: Sequence[Any]) -> list[Any]:
    """Each step's stored calls joined with their parts (one query for all of them)."""
    hashes: set[str] = set()
    for calls in calls_by_step:
        hashes |= refs_of(calls or ())
    parts = await load_parts(conn, hashes)
    return [join_calls(calls, parts) for calls in calls_by_step]


def _upsert(dialect: str) -> Any:
    """The one statement writing parts: insert a new part; for one already stored (same hash, same
    bytes) move last_used forward, which writes the row at most once a day."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(prompt_parts)
    return statement.on_conflict_do_update(
        index_elements=["hash"],
        set_={"last_used": statement.excluded.last_used},
        where=prompt_parts.c.last_used < statement.excluded.last_used,
    )


async def store_parts(conn: AsyncConnection, parts: Mapping[str, Any], used: date | None = None) -> None:
    """Insert parts not stored yet and mark every one used on `used` (default today, UTC): in the
    transaction that writes the steps referring to them, so retention never deletes a part a
    committed step refers to (see prune_parts)."""
    if not parts:
        return
    day = used or datetime.now(UTC).date()
    await conn.execute(
        _upsert(conn.dialect.name),
        [{"hash": h, "body": b, "last_used": day} for h, b in sorted(parts.items())],
    )


async def prune_parts(engine: AsyncEngine, before: date, batch: int = 10_000) -> int:
    """Delete parts last used before `before`, in short transactions of `batch` rows; returns how
    many. Safe while steps are written: a part being marked used is locked by that writer and
    skipped here, and a part deleted first is inserted again by the writer's upsert. The caller
    picks `before` no later than the day of the oldest session it keeps (a step is written on or
    after its session's day)."""
    pick = (
        select(prompt_parts.c.hash)
        .where(prompt_parts.c.last_used < before)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    total = 0
    while True:
        async with engine.begin() as conn:
            gone = (await conn.execute(delete(prompt_parts).where(prompt_parts.c.hash.in_(pick)))).rowcount
        total += gone
        if gone < batch:
            return total
