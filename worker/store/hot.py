"""The store's hot statements on the asyncpg driver, for PostgreSQL only.

A claim and a result per request, the inbox's batch, the outbox's rounds and the step writes
(prompt parts' upsert and step insert, one statement) per node step dominate the worker's
database time; through
SQLAlchemy each paid for cache keys, compilation lookups and parameter processing (about 1 ms),
on the driver a fraction of it. The statements are still written in SQLAlchemy Core against the
same tables, compiled once for PostgreSQL and run on the pooled connection's driver connection
(`driver_connection`), so schema, migrations and the portable path stay SQLAlchemy's. JSON
columns are encoded with orjson the way SQLAlchemy's JSON type would (None as JSON null).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any

import orjson
from sqlalchemy import Column, Select, Update, any_, bindparam, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import sqltypes
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from .dedup import LOCK_REQUEST_IDS, first_of_each, lock_keys
from .tables import FINISHED, PENDING, RUNNING, prompt_parts, sessions, steps

DIALECT: Dialect = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]


def json_text(value: Any) -> str:
    """JSON text as the store writes it: orjson, and the standard library for what orjson refuses
    (lone surrogates, non-string keys), so the database (not the encoder) judges the value."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        import json

        return json.dumps(value)


@dataclass(frozen=True)
class Compiled:
    """A Core statement compiled once: its SQL ($n placeholders) and how to order arguments."""

    sql: str
    names: tuple[str, ...]
    constants: Mapping[str, Any]

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[n] if n in values else self.constants[n] for n in self.names]


def compile_once(statement: ClauseElement, dialect: Dialect = DIALECT) -> Compiled:
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    positions: Sequence[str] = getattr(compiled, "positiontup", None) or ()
    constants = {k: v.value if isinstance(v, Enum) else v for k, v in compiled.params.items()}
    return Compiled(str(compiled), tuple(positions), constants)


def _is_json(column: Column[Any]) -> bool:
    return isinstance(column.type.dialect_impl(DIALECT), sqltypes.JSON)


def _encoder(column: Column[Any]) -> Any:
    if not _is_json(column):
        return None
    none_as_null = getattr(column.type.dialect_impl(DIALECT), "none_as_null", False)

    def encode(value: Any) -> str | None:
        if value is None and none_as_null:
            return None
        return json_text(value)

    return encode


def _p(name: str) -> Any:
    """A parameter filled at run time (compiling does not ask for its value)."""
    return bindparam(name, required=False)


SESSION_ENCODERS = {c.name: _encoder(c) for c in sessions.columns}

# what `complete` writes besides the outcome's own columns
RESULT_COLUMNS = (
    "status",
    "result",
    "final_ranking",
    "path",
    "reason",
    "model",
    "prompt_version",
    "policy",
    "llm_calls",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "completed_at",
)


def claim_update(request_id: Any, owner: Any, now: Any, until: Any, *, flag_steps: bool = False) -> Update:
    """The claim: take the session unless another live worker holds its lease. One statement for
    both paths (values bound as given, or parameters for the driver); `flag_steps` adds whether
    the session has steps, found with its partition key (PostgreSQL's driver path)."""
    returning: list[Any] = [
        sessions.c.id,
        sessions.c.request,
        sessions.c.request_text,
        sessions.c.attempts,
        sessions.c.replay_of,
        sessions.c.run_config,
        sessions.c.receipt_at,
        sessions.c.received_at,
        sessions.c.crashes,
        sessions.c.last_error,
    ]
    if flag_steps:
        returning.append(
            exists()
            .where(steps.c.session_id == sessions.c.id, steps.c.session_received_at == sessions.c.received_at)
            .label("has_steps")
        )
    return (
        update(sessions)
        .where(
            sessions.c.request_id == request_id,
            sessions.c.status.in_((PENDING, RUNNING)),
            or_(
                sessions.c.lease_owner.is_(None),
                sessions.c.lease_owner == owner,
                sessions.c.lease_until < now,
            ),
        )
        .values(
            status=RUNNING,
            lease_owner=owner,
            lease_until=until,
            attempts=sessions.c.attempts + 1,
            claimed_at=now,
            started_at=func.coalesce(sessions.c.started_at, now),
        )
        .returning(*returning)
    )


CLAIM = compile_once(claim_update(_p("request_id"), _p("owner"), _p("now"), _p("until"), flag_steps=True))


def complete_update(values: Mapping[str, Any]) -> Update:
    """Store a result and hand the session to the outbox, if this owner still holds it running."""
    return (
        update(sessions)
        .where(sessions.c.id == _p("session_id"), sessions.c.lease_owner == _p("owner"))
        .where(sessions.c.status == RUNNING)
        .values(**values, lease_owner=None, lease_until=None, published_at=None)
    )


COMPLETE = {
    with_config: compile_once(
        complete_update({k: _p(k) for k in (*RESULT_COLUMNS, *(("run_config",) if with_config else ()))})
    )
    for with_config in (False, True)
}


def _encoded(statement: Compiled, values: Mapping[str, Any], encoders: Mapping[str, Any]) -> list[Any]:
    encode = [encoders.get(n) for n in statement.names]
    return [v if enc is None else enc(v) for v, enc in zip(statement.args(values), encode, strict=True)]


def _pick(column: Column[Any], row: str) -> str:
    """A column's value from a row of the JSON document: JSON values as they are (JSON null kept
    apart from a missing key, which is SQL NULL), others as text cast to the column's type (a
    string too long for its column is refused, as by the insert itself)."""
    if _is_json(column):
        return f"{row}->'{column.name}'"
    text = f"{row}->>'{column.name}'"
    if isinstance(column.type, sqltypes.String):
        return text
    return f"({text})::{column.type.compile(dialect=DIALECT)}"


def _select_rows(columns: Sequence[Column[Any]], param: int) -> str:
    """SELECT of one row per element of the JSON array in parameter $param (one object per row)."""
    picked = ", ".join(_pick(c, "r") for c in columns)
    return f"SELECT {picked} FROM jsonb_array_elements(${param}::text::jsonb) AS e(r)"


STEP_COLUMNS: tuple[Column[Any], ...] = tuple(c for c in steps.columns if c.name != "id")
PART_COLUMNS: tuple[Column[Any], ...] = (prompt_parts.c.hash, prompt_parts.c.body, prompt_parts.c.last_used)


def _write_steps_sql() -> str:
    """The parts' upsert (a data-modifying CTE, always run) and the steps' insert in one statement:
    one round trip, atomic on its own in autocommit. Same conflict rules as `_upsert` and the
    portable insert: a part's last_used only moves forward, a step already stored is left alone."""
    part_names = ", ".join(c.name for c in PART_COLUMNS)
    step_names = ", ".join(c.name for c in STEP_COLUMNS)
    return (
        f"WITH parts AS (INSERT INTO {prompt_parts.name} ({part_names}) "
        f"{_select_rows(PART_COLUMNS, 1)} "
        "ON CONFLICT (hash) DO UPDATE SET last_used = excluded.last_used "
        f"WHERE {prompt_parts.name}.last_used < excluded.last_used) "
        f"INSERT INTO {steps.name} ({step_names}) "
        f"{_select_rows(STEP_COLUMNS, 2)} "
        "ON CONFLICT (session_id, session_received_at, step) DO NOTHING"
    )


WRITE_STEPS = _write_steps_sql()
# JSON columns whose None is SQL NULL (none_as_null): left out of the document rather than null
_NONE_AS_NULL = frozenset(
    c.name
    for c in (*STEP_COLUMNS, *PART_COLUMNS)
    if _is_json(c) and getattr(c.type.dialect_impl(DIALECT), "none_as_null", False)
)


def rows_document(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as one JSON array, one parameter per table (PostgreSQL takes it apart with
    jsonb_array_elements) instead of one array per column. Naive datetimes are UTC, as asyncpg
    takes them; what orjson refuses (lone surrogates, huge integers) goes through the standard
    library, so the database judges the value."""
    if _NONE_AS_NULL:
        rows = [{k: v for k, v in r.items() if v is not None or k not in _NONE_AS_NULL} for r in rows]
    try:
        return orjson.dumps(rows, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC).decode()
    except TypeError:
        import json

        return json.dumps(rows, default=_iso_utc)


def _iso_utc(value: Any) -> str:
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class HotStatements:
    """The claim, the step writes and the result on the driver connection under SQLAlchemy's pool."""

    async def write_steps(
        self,
        conn: AsyncConnection,
        parts: Sequence[Mapping[str, Any]],
        rows: Sequence[Mapping[str, Any]],
    ) -> None:
        """The prompt parts' upsert and the step rows as one statement: inside SQLAlchemy's
        transaction when it has begun one on this connection, else autocommitted (committed when
        this returns, in one round trip)."""
        driver = await _driver(conn)
        await driver.execute(WRITE_STEPS, rows_document(parts), rows_document(rows))

    async def complete(self, conn: AsyncConnection, values: Mapping[str, Any]) -> bool:
        """The result's UPDATE as one autocommitted statement; True when this owner held it."""
        driver = await _driver(conn)
        statement = COMPLETE["run_config" in values]
        status = await driver.execute(statement.sql, *_encoded(statement, values, SESSION_ENCODERS))
        return bool(status == "UPDATE 1")

    async def claim(
        self, conn: AsyncConnection, request_id: str, owner: str, now: datetime, lease_s: float
    ) -> Any:
        """The claimed session's row (a record), or None."""
        driver = await _driver(conn)
        values = {
            "request_id": request_id,
            "owner": owner,
            "now": now,
            "until": now + timedelta(seconds=lease_s),
        }
        return await driver.fetchrow(CLAIM.sql, *CLAIM.args(values))


async def _driver(conn: AsyncConnection) -> Any:
    """asyncpg's connection under SQLAlchemy's (its JSON codecs, set by SQLAlchemy, in place)."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _ids() -> Any:
    return any_(bindparam("ids", type_=ARRAY(sessions.c.request_id.type), required=False))


def session_by_request(request_id: Any) -> Select[Any]:
    return select(sessions.c.id).where(sessions.c.request_id == request_id).limit(1)


def stored_under(matching: ColumnElement[bool]) -> Select[Any]:
    """What the inbox compares a request with: the sessions already stored under its request_id."""
    return select(
        sessions.c.request_id, sessions.c.request_hash, sessions.c.request, sessions.c.received_at
    ).where(matching)


def source_update(matching: ColumnElement[bool], topic: Any) -> Update:
    """A session stored before without a source (offline, a live replay) gets the one it came by."""
    return update(sessions).where(matching, sessions.c.source_topic.is_(None)).values(source_topic=topic)


def seen_update(matching: ColumnElement[bool], now: Any) -> Update:
    """A finished session that came through Kafka and is received again: its result goes out again."""
    return (
        update(sessions)
        .where(
            matching,
            sessions.c.status.in_(FINISHED),
            sessions.c.received_at < now,
            sessions.c.source_topic.is_not(None),
        )
        .values(published_at=None)
        .returning(sessions.c.request_id)
    )


SESSION_BY_REQUEST = compile_once(session_by_request(_p("request_id")))
LOCK_IDS = compile_once(LOCK_REQUEST_IDS)
STORED = compile_once(stored_under(sessions.c.request_id == _ids()))
SOURCE_TOPIC = compile_once(source_update(sessions.c.request_id == _ids(), _p("topic")))
SEEN = compile_once(seen_update(sessions.c.request_id == _ids(), _p("now")))
_session_inserts: dict[tuple[str, ...], Compiled] = {}


def _session_insert(keys: tuple[str, ...]) -> Compiled:
    found = _session_inserts.get(keys)
    if found is None:
        found = _session_inserts[keys] = compile_once(
            postgresql.insert(sessions).values({k: _p(k) for k in keys})
        )
    return found


class HotInbox:
    """The inbox's statements on the driver, in one driver transaction per batch (see
    Store.receive_checked for what each does; dedup.py for the lock)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.inserted: set[str] = set()

    async def session_exists(self, request_id: str) -> bool:
        return (
            await self.driver.fetchval(
                SESSION_BY_REQUEST.sql, *SESSION_BY_REQUEST.args({"request_id": request_id})
            )
            is not None
        )

    async def insert_once(self, rows: list[dict[str, Any]], now: datetime) -> list[Any]:
        """Lock the request_ids, read what is stored under them, insert the rows not stored yet
        (the first of a batch's duplicates); returns the stored rows found before the insert."""
        first = first_of_each(rows)
        await self.driver.execute(LOCK_IDS.sql, lock_keys(first))
        stored = await self.driver.fetch(STORED.sql, list(first))
        have = {r["request_id"] for r in stored}
        new = [row for rid, row in first.items() if rid not in have]
        self.inserted = {row["request_id"] for row in new}
        if new:
            statement = _session_insert(tuple(new[0]))
            await self.driver.executemany(
                statement.sql, [_encoded(statement, r, SESSION_ENCODERS) for r in new]
            )
        return [r for r in stored if r["received_at"] < now]

    async def set_source(self, topic: str, request_ids: list[str]) -> None:
        await self.driver.execute(SOURCE_TOPIC.sql, *SOURCE_TOPIC.args({"ids": request_ids, "topic": topic}))

    async def requeue_seen(self, request_ids: list[str], now: datetime) -> list[str]:
        found = await self.driver.fetch(SEEN.sql, *SEEN.args({"ids": request_ids, "now": now}))
        return [r["request_id"] for r in found]


def _outbox(limit: int, deployment: str | None = None) -> Select[Any]:
    """Finished sessions that came through Kafka and whose result Kafka has not acknowledged;
    with `deployment`, only that deployment's (each publishes its own, to its recorded topic)."""
    query = select(sessions.c.request_id, sessions.c.result, sessions.c.result_topic).where(
        sessions.c.status.in_(FINISHED),
        sessions.c.published_at.is_(None),
        sessions.c.source_topic.is_not(None),
    )
    if deployment is not None:  # rows stored before sessions named their deployment: anyone's
        query = query.where(or_(sessions.c.deployment == deployment, sessions.c.deployment.is_(None)))
    return query.order_by(sessions.c.completed_at).limit(limit)


def _outbox_select(deployment: bool) -> Compiled:
    """The outbox's pick, locking its rows and skipping those another holds."""
    return compile_once(
        _outbox(0, _p("deployment") if deployment else None)
        .limit(_p("limit"))
        .with_for_update(skip_locked=True)
    )


OUTBOX = {with_deployment: _outbox_select(with_deployment) for with_deployment in (False, True)}
MARK_PUBLISHED = compile_once(
    update(sessions).where(sessions.c.request_id == _ids()).values(published_at=_p("published_at"))
)


async def publish_batch(
    conn: AsyncConnection,
    send: Callable[[list[dict[str, Any]]], Awaitable[None]],
    limit: int,
    deployment: str | None,
    now: Callable[[], datetime],
) -> int:
    """Store.publish_batch on the driver: pick, send, mark published, in one transaction."""
    driver = await _driver(conn)
    statement = OUTBOX[deployment is not None]
    async with driver.transaction():
        found = await driver.fetch(statement.sql, *statement.args({"deployment": deployment, "limit": limit}))
        if not found:
            return 0
        rows = [dict(r) for r in found]
        await send(rows)
        values = {"ids": [r["request_id"] for r in rows], "published_at": now()}
        await driver.execute(MARK_PUBLISHED.sql, *MARK_PUBLISHED.args(values))
    return len(rows)
