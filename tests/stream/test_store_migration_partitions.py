"""Migration 0008_partitions on a store with rows: created at revision 0003 (unpartitioned),
upgraded, then read back through the Store and the audit queries, deduplicated, retained; and
downgraded back with the rows kept."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from alembic import command
from sqlalchemy import MetaData, Table, insert, text
from sqlalchemy.ext.asyncio import create_async_engine
from stream_helpers import make_requests

from worker.audit.filters import TraceFilters
from worker.audit.queries import TraceQueries
from worker.engine.steps import StepRecord
from worker.schemas import RerankRequest, Source, canonical_hash
from worker.store.migrate import alembic_config, upgrade, upgrade_async
from worker.store.retention import retain
from worker.store.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture
def db_at_0003(pg_exec):
    name = f"llm4rerank_test_mig_{uuid.uuid4().hex[:8]}"
    pg_exec(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url, "0003")
        yield url
    finally:
        pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


SESSION = text(
    "INSERT INTO sessions (request_id, user_id, goal, request, status, received_at, attempts, "
    "request_hash, request_text, source_topic, deployment, final_ranking, completed_at, published_at) "
    "VALUES (:rid, :user, :goal, CAST(:request AS jsonb), :status, :at, 1, :hash, :text, 't', 'd', "
    "CAST(:ranking AS jsonb), :done, :done) RETURNING id"
)


async def _fill(url: str, requests: list[RerankRequest], ages: list[int]) -> dict[str, int]:
    """Rows as a store at 0003 holds them: finished sessions with two steps, one pending."""
    engine = create_async_engine(url)
    ids = {}
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            # steps as reflected at 0003: the current table definition has a column more
            old_steps = await conn.run_sync(lambda c: Table("steps", MetaData(), autoload_with=c))
            for request, age in zip(requests, ages, strict=True):
                at = now - timedelta(days=age)
                finished = age > 0
                ranking = orjson.dumps([c.item_id for c in request.candidates]).decode()
                body = request.model_dump(mode="json", exclude_none=True)
                sid = (
                    await conn.execute(
                        SESSION,
                        {
                            "rid": request.request_id,
                            "user": request.user.user_id,
                            "goal": request.goal,
                            "request": orjson.dumps(body).decode(),
                            "status": "ok" if finished else "pending",
                            "at": at,
                            "hash": canonical_hash(request),
                            "text": orjson.dumps(body).decode(),
                            "ranking": ranking if finished else "null",
                            "done": at if finished else None,
                        },
                    )
                ).scalar_one()
                ids[request.request_id] = sid
                for step in (1, 2):
                    record = StepRecord(
                        step=step,
                        node="accuracy",
                        policy="llm",
                        ranking=[c.item_id for c in request.candidates],
                        next_node="stop" if step == 2 else "accuracy",
                    )
                    await conn.execute(
                        insert(old_steps),
                        {**record.model_dump(mode="json"), "session_id": sid, "created_at": at},
                    )
    finally:
        await engine.dispose()
    return ids


async def test_a_store_with_rows_upgrades_and_reads_back(db_at_0003: str) -> None:
    url = db_at_0003
    requests = [RerankRequest.model_validate(r) for r in make_requests(4, seed=9, prefix="mig")]
    ages = [40, 10, 3, 0]  # days; the last is pending, to be resumed
    ids = await _fill(url, requests, ages)

    await upgrade_async(url)

    store = Store(url)
    try:
        async with store.engine.connect() as conn:
            kind = (
                await conn.execute(text("SELECT relkind::text FROM pg_class WHERE relname = 'sessions'"))
            ).scalar()
            stray = (await conn.execute(text("SELECT count(*) FROM sessions_default"))).scalar()
            names = set(
                (
                    await conn.execute(
                        text(
                            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                            "WHERE i.inhparent = 'steps'::regclass"
                        )
                    )
                ).scalars()
            )
        assert kind == "p" and stray == 0
        now = datetime.now(UTC)
        for age in ages:
            assert (now - timedelta(days=age)).strftime("steps_p%Y%m%d") in names

        queries = TraceQueries(store.engine)
        assert await queries.count(TraceFilters()) == 4
        for request in requests:
            stored = await queries.session(request.request_id)
            assert stored is not None
            assert [s["step"] for s in stored["steps"]] == [1, 2]
            assert stored["steps"][0]["ranking"] == [c.item_id for c in request.candidates]
        loaded = await queries.load([r.request_id for r in requests])
        assert [len(s.steps) for s in loaded] == [2, 2, 2, 2]

        pending = requests[-1]
        claim = await store.claim(pending.request_id, "w1", 30)
        assert claim is not None and claim.session_id == ids[pending.request_id]
        assert [s.step for s in claim.steps] == [1, 2] and claim.request == pending

        # request_ids stored before the migration still deduplicate; new ids continue the sequence
        again = await store.receive_checked([(requests[1], Source(topic="t", partition=0, offset=1))])
        assert again.seen == [requests[1].request_id] and again.conflicts == {}
        fresh = RerankRequest.model_validate(make_requests(1, seed=10, prefix="mig-new")[0])
        await store.receive([(fresh, None)])
        new_claim = await store.claim(fresh.request_id, "w1", 30)
        assert new_claim is not None and new_claim.session_id > max(ids.values())

        report = await retain(url, timedelta(days=30))
        assert len(report.dropped) == 1
        assert await queries.session(requests[0].request_id) is None
        assert await queries.count(TraceFilters()) == 4  # 3 migrated + the new one
    finally:
        await store.close()

    await asyncio.to_thread(command.downgrade, alembic_config(url), "0003")
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            kind = (
                await conn.execute(text("SELECT relkind::text FROM pg_class WHERE relname = 'sessions'"))
            ).scalar()
            counts = (
                await conn.execute(
                    text("SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM steps)")
                )
            ).one()
        assert kind == "r" and tuple(counts) == (4, 6)
    finally:
        await engine.dispose()
