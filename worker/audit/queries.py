"""Read-only queries over the trace store, shared by the CLI, the audit API, replay and export.

Everything here only SELECTs, with bound parameters, so the same code runs under the auditors'
read-only database role. Works on PostgreSQL and SQLite (the offline `rerank --store` file).
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from ..engine.steps import StepRecord
from ..store.compact import unpack_step
from ..store.parts import joined
from ..store.store import read_steps
from ..store.tables import sessions, steps
from .filters import Order, TraceFilters, decode_cursor, encode_cursor

SUMMARY_COLUMNS = (
    sessions.c.request_id,
    sessions.c.user_id,
    sessions.c.goal,
    sessions.c.status,
    sessions.c.model,
    sessions.c.prompt_version,
    sessions.c.policy,
    sessions.c.path,
    sessions.c.final_ranking,
    sessions.c.reason,
    sessions.c.llm_calls,
    sessions.c.prompt_tokens,
    sessions.c.completion_tokens,
    sessions.c.latency_ms,
    sessions.c.received_at,
    sessions.c.completed_at,
    sessions.c.replay_of,
    sessions.c.replay_mode,
)
DETAIL_EXTRA = (
    sessions.c.request,
    sessions.c.started_at,
    sessions.c.attempts,
    sessions.c.source_topic,
    sessions.c.source_partition,
    sessions.c.source_offset,
    sessions.c.run_config,
    sessions.c.receipt_at,
    sessions.c.crashes,
    sessions.c.deployment,
    sessions.c.result_topic,
    sessions.c.request_text,
    sessions.c.notes,
)
STEP_COLUMNS = tuple(c for c in steps.c if c.name not in ("id", "session_id", "calls"))


@dataclass
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass
class StoredSession:
    """A finished or unfinished session with its steps and LLM calls, as replay needs it."""

    row: dict[str, Any]
    steps: list[StepRecord]

    @property
    def request_id(self) -> str:
        return str(self.row["request_id"])


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; the store only ever writes UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def conditions(f: TraceFilters, dialect: str = "postgresql") -> list[ColumnElement[bool]]:
    """The WHERE clauses of a filter set; every value is a bound parameter. On PostgreSQL the
    goal and item filters are also phrased so that their GIN indexes (trigram, jsonb) serve them."""
    c = sessions.c
    out: list[ColumnElement[bool]] = []
    if f.request_ids:
        out.append(c.request_id.in_(list(f.request_ids)))
    if f.since is not None:
        out.append(c.received_at >= f.since)
    if f.until is not None:
        out.append(c.received_at < f.until)
    for column, value in (
        (c.user_id, f.user),
        (c.status, f.status),
        (c.model, f.model),
        (c.prompt_version, f.prompt_version),
        (c.replay_of, f.replay_of),
    ):
        if value is not None:
            out.append(column == value)
    if f.goal is not None:
        escaped = f.goal.replace("/", "//").replace("%", "/%").replace("_", "/_")
        out.append(c.goal.ilike(f"%{escaped}%", escape="/"))
    if f.node is not None:
        out.append(_visited(f, f.node, dialect))
    if f.item is not None and f.top_k is not None:
        if dialect == "postgresql":
            out.append(type_coerce(c.final_ranking, JSONB).contains([f.item]))
        out.append(or_(*(c.final_ranking[i].as_string() == f.item for i in range(f.top_k))))
    if f.replays == "exclude":
        out.append(c.replay_of.is_(None))
    elif f.replays == "only":
        out.append(c.replay_of.is_not(None))
    return out


def _visited(f: TraceFilters, node: str, dialect: str) -> ColumnElement[bool]:
    """Sessions with a step at `node`. On PostgreSQL a row IN over the steps' (node,
    session_received_at, session_id) index: both sides come in key order, so a page is a merge
    semi-join that stops when full, whether the node is rare or in every session; the time range
    is repeated on the steps' side so that it skips what the sessions' side skips."""
    c = sessions.c
    if dialect == "postgresql":
        visits = select(steps.c.session_received_at, steps.c.session_id).where(steps.c.node == node)
        if f.since is not None:
            visits = visits.where(steps.c.session_received_at >= f.since)
        if f.until is not None:
            visits = visits.where(steps.c.session_received_at < f.until)
        return tuple_(c.received_at, c.id).in_(visits)
    return exists().where(*_steps_of(c.id, c.received_at, dialect), steps.c.node == node)


def _steps_of(session_id: Any, received_at: Any, dialect: str) -> list[ColumnElement[bool]]:
    """The conditions finding a session's steps; on PostgreSQL with the partition key, so that
    only the session's partition of steps is searched (worker/store/partitions.py)."""
    out: list[ColumnElement[bool]] = [steps.c.session_id == session_id]
    if dialect == "postgresql":
        out.append(steps.c.session_received_at == received_at)
    return out


def _after(cursor: tuple[datetime, int], order: Order) -> ColumnElement[bool]:
    at, row_id = cursor
    key = tuple_(sessions.c.received_at, sessions.c.id)  # a row comparison: one index range
    position = tuple_(literal(at, sessions.c.received_at.type), literal(row_id, sessions.c.id.type))
    return key < position if order == "desc" else key > position


def page_query(
    where: Sequence[ColumnElement[bool]], limit: int, order: Order, dialect: str = "postgresql"
) -> Select[Any]:
    """One page of summaries ordered by (received_at, id).

    PostgreSQL (sessions partitioned by time, migration 0008): selected directly; the partitions
    are scanned in time order, each by the index that leads with the filtered column and ends in
    those keys, until the page is full. A join back to sessions by id would be planned as a probe
    of every partition (or a scan of them all) per row. Elsewhere (SQLite, one table): the page's
    ids first, then their summaries, so the planner does not have to guess how much of the table
    a filter skips before the first matching row."""

    def keys(table: Any) -> list[Any]:
        return [k.desc() if order == "desc" else k.asc() for k in (table.c.received_at, table.c.id)]

    if dialect == "postgresql":
        return select(sessions.c.id, *SUMMARY_COLUMNS).where(*where).order_by(*keys(sessions)).limit(limit)
    page = (
        select(sessions.c.id, sessions.c.received_at)
        .where(*where)
        .order_by(*keys(sessions))
        .limit(limit)
        .subquery("page")
    )
    return (
        select(sessions.c.id, *SUMMARY_COLUMNS)
        .join_from(sessions, page, sessions.c.id == page.c.id)
        .order_by(*keys(page))
    )


def _steps_in(rows: Sequence[Any], dialect: str) -> list[ColumnElement[bool]]:
    """The steps of these sessions (rows with id and received_at), partitions named on PostgreSQL."""
    out: list[ColumnElement[bool]] = [steps.c.session_id.in_([r["id"] for r in rows])]
    if dialect == "postgresql":
        out.append(steps.c.session_received_at.in_(sorted({r["received_at"] for r in rows})))
    return out


def plain(row: Any) -> dict[str, Any]:
    """A row as a dict with plain str keys (SQLAlchemy's quoted_name keys trip orjson)."""
    return {str(k): v for k, v in row.items()}


def summary(row: Any) -> dict[str, Any]:
    data = plain(row)
    data.pop("id", None)
    text = data.pop("request_text", None)
    if text:  # the request as its producer wrote it (key order kept), not JSONB's reordering
        data["request"] = orjson.loads(text)
    for key in ("received_at", "completed_at", "started_at", "receipt_at"):
        if key in data:
            data[key] = utc(data[key])
    return data


class TraceQueries:
    """The audit questions, one method each; holds no state but the engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def list(
        self, filters: TraceFilters, *, limit: int, cursor: str | None = None, order: Order = "desc"
    ) -> Page:
        """One page of session summaries, newest first by default, with the next page's cursor."""
        where = conditions(filters, self.engine.dialect.name)
        if cursor:
            where.append(_after(decode_cursor(cursor, order), order))
        query = page_query(where, limit + 1, order, self.engine.dialect.name)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = encode_cursor(utc(last["received_at"]), last["id"], order)  # type: ignore[arg-type]
        return Page([summary(r) for r in rows], next_cursor)

    async def count(self, filters: TraceFilters) -> int:
        where = conditions(filters, self.engine.dialect.name)
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(sessions).where(*where))).scalar_one()

    async def iterate(
        self, filters: TraceFilters, *, order: Order = "asc", batch: int = 200, limit: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching summary, page by page (bounded memory), oldest first by default."""
        cursor: str | None = None
        seen = 0
        while True:
            size = batch if limit is None else min(batch, limit - seen)
            if size <= 0:
                return
            page = await self.list(filters, limit=size, cursor=cursor, order=order)
            for item in page.items:
                yield item
            seen += len(page.items)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def session(self, request_id: str, *, with_calls: bool = False) -> dict[str, Any] | None:
        """One session with every step; LLM calls (prompts and raw answers) only when asked."""
        columns = (*STEP_COLUMNS, steps.c.calls) if with_calls else STEP_COLUMNS
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(sessions.c.id, *SUMMARY_COLUMNS, *DETAIL_EXTRA).where(
                            sessions.c.request_id == request_id
                        )
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            step_rows = (
                (
                    await conn.execute(
                        select(*columns, _call_count(self.engine.dialect.name).label("call_count"))
                        .where(*_steps_of(row["id"], row["received_at"], self.engine.dialect.name))
                        .order_by(steps.c.step)
                    )
                )
                .mappings()
                .all()
            )
            steps_out = [_step(s) for s in step_rows]
            if with_calls:
                for step, calls in zip(
                    steps_out, await joined(conn, [s["calls"] for s in steps_out]), strict=True
                ):
                    step["calls"] = calls
        data = summary(row)
        data["steps"] = steps_out
        return data

    async def step_calls(self, request_id: str, step: int) -> builtins.list[dict[str, Any]] | None:
        """The LLM calls of one step: the messages sent and the raw answers, with their costs."""
        async with self.engine.connect() as conn:
            calls = (
                await conn.execute(
                    select(steps.c.calls)
                    .select_from(
                        steps.join(
                            sessions,
                            and_(*_steps_of(sessions.c.id, sessions.c.received_at, self.engine.dialect.name)),
                        )
                    )
                    .where(sessions.c.request_id == request_id, steps.c.step == step)
                )
            ).first()
            if calls is None:
                return None
            return list((await joined(conn, [calls[0] or []]))[0])

    async def load(self, request_ids: Sequence[str]) -> builtins.list[StoredSession]:
        """Full sessions (request, outcome, steps with calls) for replay, in the order asked."""
        if not request_ids:
            return []
        async with self.engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(sessions.c.id, *SUMMARY_COLUMNS, *DETAIL_EXTRA).where(
                            sessions.c.request_id.in_(list(request_ids))
                        )
                    )
                )
                .mappings()
                .all()
            )
            by_session: dict[int, list[StepRecord]] = {r["id"]: [] for r in rows}
            if by_session:
                step_rows = (
                    (
                        await conn.execute(
                            select(steps)
                            .where(*_steps_in(rows, self.engine.dialect.name))
                            .order_by(steps.c.session_id, steps.c.step)
                        )
                    )
                    .mappings()
                    .all()
                )
                for s, record in zip(step_rows, await read_steps(conn, step_rows), strict=True):
                    by_session[s["session_id"]].append(record)
        found = {r["request_id"]: StoredSession(summary(r), by_session[r["id"]]) for r in rows}
        return [found[rid] for rid in request_ids if rid in found]


def _call_count(dialect: str) -> ColumnElement[Any]:
    """How many LLM calls a step made, counted in the database so prompts stay there (a list of
    calls, or deflated calls with their count in "n": worker.store.calls_codec)."""
    if dialect == "postgresql":
        calls = type_coerce(steps.c.calls, JSONB)
        kind, length, count = func.jsonb_typeof(calls), func.jsonb_array_length(calls), calls["n"].astext
    else:
        kind = func.json_type(steps.c.calls)
        length, count = func.json_array_length(steps.c.calls), func.json_extract(steps.c.calls, "$.n")
    return func.coalesce(case((kind == "array", length), else_=cast(count, Integer)), 0)


def _step(row: Any) -> dict[str, Any]:
    data = unpack_step(plain(row))
    data["created_at"] = utc(data.get("created_at"))
    return data


LOAD_BATCH = 100


async def select_sessions(
    queries: TraceQueries, filters: TraceFilters, limit: int | None = None
) -> AsyncIterator[StoredSession]:
    """Matching sessions with their steps, oldest first, loaded a batch at a time."""
    ids: list[str] = []
    async for item in queries.iterate(filters, order="asc", limit=limit):
        ids.append(item["request_id"])
        if len(ids) >= LOAD_BATCH:
            for stored in await queries.load(ids):
                yield stored
            ids = []
    for stored in await queries.load(ids):
        yield stored
