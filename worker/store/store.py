"""Trace store operations: the inbox, leases, steps, results and the outbox, on one async engine.

Every write is idempotent (insert-or-ignore on request_id and on (session, step)), so a worker
that crashed at any point can run again over the same messages without duplicating anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Protocol

import orjson
from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..engine.steps import StepRecord
from ..schemas import RerankRequest, RerankResult, Source, canonical_hash, utcnow
from .calls_codec import deflate_calls
from .compact import pack_step, unpack_step
from .dedup import insert_sessions_once
from .held import HeldConnection, invalidating
from .hot import (
    HotInbox,
    HotStatements,
    _driver,
    _outbox,
    claim_update,
    json_text,
    seen_update,
    session_by_request,
    source_update,
    stored_under,
)
from .hot import publish_batch as hot_publish_batch
from .parts import joined, split_calls, store_parts
from .tables import FINISHED, PENDING, RUNNING, sessions, steps


@dataclass
class Claim:
    """A session this worker holds the lease on, with the steps already persisted."""

    session_id: int
    request: RerankRequest
    attempts: int
    steps: list[StepRecord]
    replay_of: str | None = None
    run_config: dict[str, Any] | None = None
    receipt_at: datetime | None = None
    crashes: int = 0
    last_error: str | None = None


@dataclass
class Receipt:
    """What recording a batch found: request_ids finished already (their stored results are queued
    again), request_ids stored before with different content (-> when the first arrived), and
    replay-of headers that named no stored session."""

    seen: list[str] = field(default_factory=list)
    conflicts: dict[str, datetime] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


RECEIVED_KEPT = 2_000  # requests received and not claimed yet, kept validated


def stored_request(text: str | None, data: Any) -> RerankRequest:
    """The request as received: from its own JSON text when stored (key order kept), else JSONB."""
    return RerankRequest.model_validate(orjson.loads(text) if text else data)


def make_engine(url: str, *, pre_ping: bool = True, **kwargs: Any) -> AsyncEngine:
    """JSON through orjson both ways. Without `pre_ping` a connection the database dropped fails
    once: SQLAlchemy then invalidates the pool (and the hot path its connection), and the
    caller's retry (every store call has one) gets a fresh connection."""
    kwargs = {"json_serializer": json_text, "json_deserializer": orjson.loads, **kwargs}
    if url.startswith("sqlite"):
        return create_async_engine(url, **kwargs)
    return create_async_engine(
        url, pool_size=10, max_overflow=10, pool_pre_ping=pre_ping, pool_recycle=300, **kwargs
    )


class Store:
    def __init__(self, url: str, engine: AsyncEngine | None = None) -> None:
        self.url = url
        # the pre-ping cost a round trip per checkout; a dropped connection is retried instead
        self.engine = engine or make_engine(url, pre_ping=False)
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        self.hot = HotStatements() if self.engine.dialect.driver == "asyncpg" else None
        self._journal = HeldConnection(self.engine)  # the step writes' own connection (held.py)
        # one statement each, compiled once and executed with many parameter sets
        # PostgreSQL: sessions partitioned by time, request_id kept unique by worker/store/dedup.py
        pg = self.engine.dialect.name == "postgresql"
        self._insert_session = (
            insert(sessions) if pg else insert(sessions).on_conflict_do_nothing(index_elements=["request_id"])
        )
        self._insert_step = insert(steps).on_conflict_do_nothing(
            index_elements=["session_id", "session_received_at", "step"] if pg else ["session_id", "step"]
        )
        self._session_times: dict[int, datetime] = {}  # session id -> received_at (steps' partition)
        # request text as stored -> the request this process validated when it received it: the
        # claim that follows need not validate the same text again
        self._received: dict[str, RerankRequest] = {}

    async def close(self) -> None:
        await self._journal.close()
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    # inbox -----------------------------------------------------------------------------------
    async def receive(
        self, batch: Sequence[tuple[RerankRequest, Source | None]], **options: Any
    ) -> list[str]:
        """`receive_checked` (same options) for callers that only need the request_ids seen again."""
        return (await self.receive_checked(batch, **options)).seen

    async def receive_checked(
        self,
        batch: Sequence[tuple[RerankRequest, Source | None]],
        *,
        replay_of: str | None = None,
        replay_mode: str | None = None,
        receipts: Sequence[datetime | None] | None = None,
        run_config: Callable[[RerankRequest], dict[str, Any]] | None = None,
        deployment: str | None = None,
        result_topic: str | None = None,
        texts: Sequence[str | None] | None = None,
    ) -> Receipt:
        """Record requests durably before their offsets are committed.

        A request_id stored before with the same content (canonical hash) is "seen": its stored
        result is queued for publishing again, no walk runs. With different content it is a
        conflict and nothing is changed. `texts` are the requests' JSON as received (else the
        model's own dump, which keeps the producer's key order too). `replay_of` is kept only
        when that session is stored here; otherwise the request is an original with a note.

        Each session keeps when its clock started (`receipts`, e.g. the Kafka timestamps; now when
        absent), the configuration it runs with, and the deployment (consumer group) that resumes
        and publishes it, to `result_topic`. Only sessions that arrived through Kafka (a `source`)
        are published; offline runs and live replays are not, until the same request_id arrives
        through Kafka."""
        receipt = Receipt()
        if not batch:
            return receipt
        now = utcnow()
        starts = list(receipts) if receipts is not None else [None] * len(batch)
        texts = list(texts) if texts is not None else [None] * len(batch)
        hashes = {req.request_id: canonical_hash(req) for req, _ in batch}
        fields = _BatchFields(replay_of, replay_mode, run_config, deployment, result_topic)
        if self.hot is not None:
            async with self.engine.connect() as conn, invalidating(conn):
                driver = await _driver(conn)
                async with driver.transaction():
                    rows = await self._receive(
                        HotInbox(driver), batch, texts, starts, hashes, now, receipt, fields
                    )
        else:
            async with self.engine.begin() as conn:
                portable = _PortableInbox(conn, self._insert_session)
                rows = await self._receive(portable, batch, texts, starts, hashes, now, receipt, fields)
        if len(self._received) > RECEIVED_KEPT:
            self._received.clear()
        for row, (req, _) in zip(rows, batch, strict=True):
            self._received[str(row["request_text"])] = req
        return receipt

    async def _receive(
        self,
        inbox: InboxStatements,
        batch: Sequence[tuple[RerankRequest, Source | None]],
        texts: Sequence[str | None],
        starts: Sequence[datetime | None],
        hashes: dict[str, str],
        now: datetime,
        receipt: Receipt,
        fields: _BatchFields,
    ) -> list[dict[str, Any]]:
        """receive_checked's statements, on the driver (HotInbox) or through SQLAlchemy."""
        replay_of, replay_mode, run_config = fields.replay_of, fields.replay_mode, fields.run_config
        notes = None
        if replay_of is not None and not await inbox.session_exists(replay_of):
            note = f"replay-of {replay_of!r} names no session in this store; processed as an original request"
            receipt.notes.append(note)
            notes, replay_of, replay_mode = [note], None, None
        rows = [  # the request is stored once, as its text (in SQL: request_text::jsonb)
            {
                "request_id": req.request_id,
                "user_id": req.user.user_id,
                "goal": req.goal,
                "status": PENDING,
                "received_at": now,
                "attempts": 0,
                "replay_of": replay_of,
                "replay_mode": replay_mode,
                "request_hash": hashes[req.request_id],
                "request_text": text
                if text is not None
                else orjson.dumps(req.model_dump(mode="json", exclude_none=True)).decode(),
                "notes": notes,
                "source_topic": src.topic if src else None,
                "source_partition": src.partition if src else None,
                "source_offset": src.offset if src else None,
                "receipt_at": min(start, now) if start is not None else now,
                "run_config": run_config(req) if run_config is not None else None,
                "deployment": fields.deployment,
                "result_topic": fields.result_topic,
                "crashes": 0,
            }
            for (req, src), text, start in zip(batch, texts, starts, strict=True)
        ]
        for row in await inbox.insert_once(rows, now):
            first = row["request_hash"] or canonical_hash(RerankRequest.model_validate(row["request"]))
            if first != hashes[row["request_id"]]:
                receipt.conflicts[row["request_id"]] = row["received_at"]
        ids = [rid for rid in hashes if rid not in receipt.conflicts]
        # rows this batch inserted have their source and are pending: the updates below would
        # change none of them, so they run only for request_ids stored before (a round trip each)
        before = [rid for rid in ids if rid not in inbox.inserted]
        by_topic: dict[str, list[str]] = {}
        for req, src in batch:
            if src is not None and req.request_id in before:
                by_topic.setdefault(src.topic, []).append(req.request_id)
        for topic, arrived in by_topic.items():  # stored before without a source: now it has one
            await inbox.set_source(topic, arrived)
        if before:
            receipt.seen = await inbox.requeue_seen(before, now)
        return rows

    # leases ----------------------------------------------------------------------------------
    async def claim(self, request_id: str, owner: str, lease_s: float) -> Claim | None:
        """Take the session unless another live worker holds it (its lease not yet expired)."""
        now = utcnow()
        if self.hot is not None:
            async with self.engine.connect() as conn, invalidating(conn):
                found = await self.hot.claim(conn, request_id, owner, now, lease_s)
                if found is None:
                    return None
                claimed = SimpleNamespace(**dict(found))
                self._remember(claimed.id, claimed.received_at)
                stored = await self._steps(conn, claimed.id, claimed.received_at) if claimed.has_steps else []
                if conn.in_transaction():  # SQLAlchemy began one only to read the steps
                    await conn.commit()
            return _claim(claimed, stored, self._received.pop(claimed.request_text or "", None))
        async with self.engine.begin() as conn:
            until = now + timedelta(seconds=lease_s)
            row = (await conn.execute(claim_update(request_id, owner, now, until))).first()
            if row is None:
                return None
            self._remember(row.id, row.received_at)
            stored = await self._steps(conn, row.id, row.received_at)
        return _claim(row, stored, self._received.pop(row.request_text or "", None))

    async def orphans(self, deployment: str | None, limit: int = 500) -> list[str]:
        """Unfinished sessions of this deployment nobody holds (a crashed or stopped worker's):
        to resume on start, on rebalance and periodically. Another deployment's are never taken."""
        now = utcnow()
        legacy = and_(sessions.c.deployment.is_(None), sessions.c.source_topic.is_not(None))
        owned = legacy if deployment is None else or_(sessions.c.deployment == deployment, legacy)
        async with self.engine.connect() as conn:
            return list(
                (
                    await conn.execute(
                        select(sessions.c.request_id)
                        .where(
                            owned,
                            sessions.c.status.in_((PENDING, RUNNING)),
                            or_(sessions.c.lease_owner.is_(None), sessions.c.lease_until < now),
                        )
                        .order_by(sessions.c.received_at)
                        .limit(limit)
                    )
                ).scalars()
            )

    async def crashed(self, request_id: str, owner: str, error: str) -> None:
        """A walk raised: count it, keep the reason and give the lease back at once."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(
                    sessions.c.request_id == request_id,
                    sessions.c.lease_owner == owner,
                    sessions.c.status == RUNNING,
                )
                .values(
                    crashes=sessions.c.crashes + 1,
                    last_error=error[:2000],
                    lease_owner=None,
                    lease_until=None,
                )
            )

    async def renew(self, owner: str, lease_s: float) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(sessions)
                .where(sessions.c.lease_owner == owner, sessions.c.status == RUNNING)
                .values(lease_until=utcnow() + timedelta(seconds=lease_s))
            )
        return result.rowcount

    async def release(self, owner: str, request_ids: Iterable[str] | None = None) -> None:
        """Give sessions back (shutdown): another worker may resume them at once."""
        cond = [sessions.c.lease_owner == owner, sessions.c.status.in_((PENDING, RUNNING))]
        if request_ids is not None:
            cond.append(sessions.c.request_id.in_(list(request_ids)))
        async with self.engine.begin() as conn:
            await conn.execute(update(sessions).where(*cond).values(lease_owner=None, lease_until=None))

    # steps -----------------------------------------------------------------------------------
    async def add_steps(self, batch: Sequence[tuple[int, StepRecord]]) -> None:
        """Persist steps of many sessions in one transaction (group commit)."""
        if not batch:
            return
        now = utcnow()
        parts: dict[str, Any] = {}
        rows = [step_row(sid, step, now, parts) for sid, step in batch]
        if self.hot is not None:
            async with self._journal.use() as conn:
                times = await self._received_at(conn, {sid for sid, _ in batch})
                for row in rows:
                    row["session_received_at"] = times.get(row["session_id"])
                day = now.date()
                upserts = [{"hash": h, "body": b, "last_used": day} for h, b in sorted(parts.items())]
                await self.hot.write_steps(conn, upserts, rows)
                if conn.in_transaction():  # only when a received_at had to be read
                    await conn.commit()
            return
        async with self.engine.begin() as conn:
            times = await self._received_at(conn, {sid for sid, _ in batch})
            for row in rows:
                row["session_received_at"] = times.get(row["session_id"])
            await store_parts(conn, parts, now.date())
            await conn.execute(self._insert_step, rows)

    def _remember(self, session_id: int, received_at: datetime) -> None:
        if len(self._session_times) >= 100_000:
            self._session_times.clear()
        self._session_times[session_id] = received_at

    async def _received_at(self, conn: AsyncConnection, ids: set[int]) -> dict[int, datetime]:
        """Each session's received_at, the partition key its steps carry (claim remembers it)."""
        missing = [sid for sid in ids if sid not in self._session_times]
        if missing:
            found = await conn.execute(
                select(sessions.c.id, sessions.c.received_at).where(sessions.c.id.in_(missing))
            )
            for sid, received_at in found.all():
                self._remember(sid, received_at)
        return {sid: self._session_times[sid] for sid in ids if sid in self._session_times}

    async def _steps(
        self, conn: AsyncConnection, session_id: int, received_at: datetime | None = None
    ) -> list[StepRecord]:
        query = select(steps).where(steps.c.session_id == session_id)
        if received_at is not None and conn.dialect.name == "postgresql":  # one partition
            query = query.where(steps.c.session_received_at == received_at)
        rows = (await conn.execute(query.order_by(steps.c.step))).mappings().all()
        return await read_steps(conn, rows)

    # results and the outbox ------------------------------------------------------------------
    async def complete(
        self, session_id: int, owner: str, result: RerankResult, run_config: dict[str, Any] | None = None
    ) -> bool:
        """Store the result and mark the session done in one transaction (the outbox entry)."""
        values: dict[str, Any] = {
            "status": result.status,
            "result": result.model_dump(mode="json"),
            "final_ranking": result.ranking,
            "path": result.path,
            "reason": result.reason,
            "model": result.model,
            "prompt_version": result.prompt_version,
            "policy": result.policy,
            "llm_calls": result.llm_calls,
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "latency_ms": result.latency_ms,
            "completed_at": result.completed_at,
            **({"run_config": run_config} if run_config is not None else {}),
        }
        if self.hot is not None:
            async with self.engine.connect() as conn, invalidating(conn):
                return await self.hot.complete(conn, {**values, "session_id": session_id, "owner": owner})
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(sessions)
                .where(
                    sessions.c.id == session_id, sessions.c.lease_owner == owner, sessions.c.status == RUNNING
                )
                .values(**values, lease_owner=None, lease_until=None, published_at=None)
            )
        return done.rowcount == 1

    async def publish_batch(
        self,
        send: Callable[[list[dict[str, Any]]], Awaitable[None]],
        limit: int = 500,
        deployment: str | None = None,
    ) -> int:
        """Outbox: lock a batch of unpublished results (skipping rows another worker has locked),
        `send` them and wait for Kafka's acks, then mark them published in the same transaction.
        A crash before the commit leaves them unpublished, to be sent again (at least once)."""
        if self.hot is not None:
            async with self.engine.connect() as conn, invalidating(conn):
                return await hot_publish_batch(conn, send, limit, deployment, utcnow)
        query = _outbox(limit, deployment)
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        async with self.engine.begin() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
            if not rows:
                return 0
            await send(rows)
            await conn.execute(
                update(sessions)
                .where(sessions.c.request_id.in_([r["request_id"] for r in rows]))
                .values(published_at=utcnow())
            )
        return len(rows)

    async def unpublished(self, limit: int = 500) -> list[dict[str, Any]]:
        """What the outbox would send next, without locking or sending it."""
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(_outbox(limit))).mappings()]

    async def result_of(self, request_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    select(sessions.c.result).where(
                        sessions.c.request_id == request_id, sessions.c.status.in_(FINISHED)
                    )
                )
            ).scalar()


def step_row(session_id: int, step: StepRecord, now: datetime, parts: dict[str, Any]) -> dict[str, Any]:
    """A step's row with its calls' shared parts moved into `parts` (stored once, by hash) and its
    lists and counts in their compact form (compact.py)."""
    row = pack_step(step.model_dump(mode="json"))
    row["calls"] = deflate_calls(split_calls(row["calls"], parts))
    return {**row, "session_id": session_id, "created_at": now}


async def read_steps(conn: AsyncConnection, rows: Sequence[Any]) -> list[StepRecord]:
    """StepRecords from step rows of any form (calls in full or referring to prompt parts, lists
    plain or front-coded, counts full or lean)."""
    fields = StepRecord.model_fields
    calls = await joined(conn, [r["calls"] for r in rows])
    return [
        StepRecord.model_validate(
            {**{k: v for k, v in unpack_step(r).items() if k in fields}, "calls": c or []}
        )
        for r, c in zip(rows, calls, strict=True)
    ]


def _claim(row: Any, stored: list[StepRecord], received: RerankRequest | None = None) -> Claim:
    return Claim(
        row.id,
        received or stored_request(row.request_text, row.request),
        row.attempts,
        stored,
        row.replay_of,
        row.run_config,
        _utc(row.receipt_at or row.received_at),
        row.crashes or 0,
        row.last_error,
    )


@dataclass(frozen=True)
class _BatchFields:
    """What receive_checked stores alike for every session of one batch."""

    replay_of: str | None
    replay_mode: str | None
    run_config: Callable[[RerankRequest], dict[str, Any]] | None
    deployment: str | None
    result_topic: str | None


class InboxStatements(Protocol):
    """What receive_checked runs, on the driver (hot.HotInbox) or through SQLAlchemy (below)."""

    inserted: set[str]  # request_ids insert_once stored now (empty when it cannot tell)

    async def session_exists(self, request_id: str) -> bool: ...
    async def insert_once(self, rows: list[dict[str, Any]], now: datetime) -> list[Any]: ...
    async def set_source(self, topic: str, request_ids: list[str]) -> None: ...
    async def requeue_seen(self, request_ids: list[str], now: datetime) -> list[str]: ...


class _PortableInbox:
    """The inbox's statements through SQLAlchemy, in the caller's transaction (SQLite included)."""

    def __init__(self, conn: AsyncConnection, insert: Any) -> None:
        self.conn, self.insert = conn, insert
        self.inserted: set[str] = set()

    async def session_exists(self, request_id: str) -> bool:
        return (await self.conn.execute(session_by_request(request_id))).first() is not None

    async def insert_once(self, rows: list[dict[str, Any]], now: datetime) -> list[Any]:
        """Insert the rows not stored yet; returns what was stored before under their request_ids."""
        await insert_sessions_once(self.conn, self.insert, rows)
        query = stored_under(sessions.c.request_id.in_([r["request_id"] for r in rows]))
        return list((await self.conn.execute(query.where(sessions.c.received_at < now))).mappings())

    async def set_source(self, topic: str, request_ids: list[str]) -> None:
        await self.conn.execute(source_update(sessions.c.request_id.in_(request_ids), topic))

    async def requeue_seen(self, request_ids: list[str], now: datetime) -> list[str]:
        found = await self.conn.execute(seen_update(sessions.c.request_id.in_(request_ids), now))
        return list(found.scalars().all())


def _utc(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
