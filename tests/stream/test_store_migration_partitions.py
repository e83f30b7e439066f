"""Migration 0008_partitions on a store with rows: created at revision 0007_audit_indexes
(unpartitioned, steps' calls lean with their prompt parts), upgraded, then read back through the
Store and the audit queries, deduplicated, retained; every index carried over to the partitioned
tables and their partitions (GIN and trigram included); downgraded back with the rows, the calls
and the indexes as they were."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from alembic import command
from sqlalchemy import MetaData, Table, insert, text
from sqlalchemy.ext.asyncio import create_async_engine
from stream_helpers import make_requests

from worker.audit.filters import TraceFilters
from worker.audit.queries import TraceQueries
from worker.engine.steps import LLMCall, StepRecord
from worker.schemas import RerankRequest, Source, canonical_hash
from worker.store.migrate import alembic_config, upgrade, upgrade_async
from worker.store.parts import split_calls
from worker.store.retention import retain
from worker.store.store import Store

pytestmark = pytest.mark.integration
PREVIOUS = "0007_audit_indexes"
INDEXES = text(
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
    "AND tablename IN ('sessions', 'steps', 'prompt_parts')"
)


@pytest.fixture
def db_at_0007(pg_exec):
    name = f"llm4rerank_test_mig_{uuid.uuid4().hex[:8]}"
    pg_exec(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url, PREVIOUS)
        yield url
    finally:
        pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


SESSION = text(
    "INSERT INTO sessions (request_id, user_id, goal, request, status, received_at, attempts, "
    "request_hash, request_text, source_topic, deployment, final_ranking, completed_at, published_at) "
    "VALUES (:rid, :user, :goal, CAST(:request AS jsonb), :status, :at, 1, :hash, :text, 't', 'd', "
    "CAST(:ranking AS jsonb), :done, :done) RETURNING id"
)


def _calls(request: RerankRequest, step: int) -> list[dict[str, Any]]:
    messages = [
        {"role": "system", "content": f"Rerank for {request.user.user_id}"},
        {"role": "user", "content": f"step {step}"},
    ]
    call = LLMCall(messages=messages, response_format={"type": "json_object"}, raw="{}")
    return [call.model_dump(mode="json")]


async def _fill(url: str, requests: list[RerankRequest], ages: list[int]) -> dict[str, int]:
    """Rows as a store at 0007 holds them: finished sessions with two steps, one pending; calls
    lean, their system messages and response format in prompt_parts."""
    engine = create_async_engine(url)
    ids = {}
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            # tables as reflected at 0007: the current definitions have a column more
            old_steps = await conn.run_sync(lambda c: Table("steps", MetaData(), autoload_with=c))
            old_parts = await conn.run_sync(lambda c: Table("prompt_parts", MetaData(), autoload_with=c))
            parts: dict[str, Any] = {}
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
                    row = record.model_dump(mode="json")
                    row["calls"] = split_calls(_calls(request, step), parts)
                    await conn.execute(insert(old_steps), {**row, "session_id": sid, "created_at": at})
            await conn.execute(insert(old_parts), [{"hash": h, "body": b} for h, b in parts.items()])
    finally:
        await engine.dispose()
    return ids


async def _snapshot(url: str) -> tuple[dict[tuple[str, str], str], list[tuple[Any, ...]], list[Any]]:
    """(indexes by (table, name) -> definition, sessions rows, steps' (id, session, step, calls))."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            indexes = {(t, n): d for t, n, d in (await conn.execute(INDEXES)).all()}
            rows = [
                tuple(r)
                for r in (
                    await conn.execute(
                        text(
                            "SELECT id, request_id, received_at, status, final_ranking::text "
                            "FROM sessions ORDER BY id"
                        )
                    )
                ).all()
            ]
            calls = [
                tuple(r)
                for r in (
                    await conn.execute(text("SELECT id, session_id, step, calls FROM steps ORDER BY id"))
                ).all()
            ]
            parts = [
                tuple(r)
                for r in (await conn.execute(text("SELECT hash, body FROM prompt_parts ORDER BY hash")))
            ]
    finally:
        await engine.dispose()
    return indexes, rows, [calls, parts]


def _shape(definition: str) -> str:
    """An index definition without its name and table (partitions' indexes are named by PostgreSQL)."""
    shape = re.sub(r"INDEX \S+ ON (ONLY )?\S+", "INDEX ON", definition)
    return shape


async def _partition_indexes(url: str, table: str) -> dict[str, set[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT c.relname, ix.indexdef FROM pg_inherits i "
                        "JOIN pg_class c ON c.oid = i.inhrelid "
                        "JOIN pg_indexes ix ON ix.tablename = c.relname "
                        "WHERE i.inhparent = CAST(:t AS regclass)"
                    ),
                    {"t": table},
                )
            ).all()
    finally:
        await engine.dispose()
    found: dict[str, set[str]] = {}
    for name, definition in rows:
        found.setdefault(name, set()).add(_shape(definition))
    return found


async def test_a_store_with_rows_upgrades_and_reads_back(db_at_0007: str) -> None:
    url = db_at_0007
    requests = [RerankRequest.model_validate(r) for r in make_requests(4, seed=9, prefix="mig")]
    ages = [40, 10, 3, 0]  # days; the last is pending, to be resumed
    ids = await _fill(url, requests, ages)
    indexes_before, sessions_before, steps_before = await _snapshot(url)
    assert ("sessions", "ix_sessions_goal_trgm") in indexes_before  # 0007's, to be carried over

    await upgrade_async(url)

    # every index of 0007 on the partitioned parents (unique keys now hold the partition key),
    # and PostgreSQL built each on every partition
    indexes_after, sessions_after, steps_after = await _snapshot(url)
    assert sessions_after == sessions_before and steps_after == steps_before
    keys = {"sessions_pkey", "sessions_request_id_key", "steps_pkey", "uq_steps_session_step"}
    replaced = {"ix_steps_node_session": "ix_steps_node_time_session"}  # by 0010_node_visits
    for (table, name), definition in indexes_before.items():
        if name in replaced:
            assert (table, name) not in indexes_after
            assert "(node, session_received_at, session_id)" in indexes_after[(table, replaced[name])]
        elif name not in keys:
            assert _shape(indexes_after[(table, name)]) == _shape(definition), name
    assert ("prompt_parts", "ix_prompt_parts_last_used") in indexes_after
    for table in ("sessions", "steps"):
        parent = {_shape(d) for (t, _), d in indexes_after.items() if t == table}
        per_partition = await _partition_indexes(url, table)
        assert len(per_partition) >= 2  # the default and the range partitions
        for name, shapes in per_partition.items():
            assert shapes == parent, name
        if table == "sessions":
            assert any("USING gin (goal gin_trgm_ops)" in s for s in parent)
            assert any("USING gin (final_ranking jsonb_path_ops)" in s for s in parent)

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
            stored = await queries.session(request.request_id, with_calls=True)
            assert stored is not None
            assert [s["step"] for s in stored["steps"]] == [1, 2]
            assert [s["calls"] for s in stored["steps"]] == [_calls(request, 1), _calls(request, 2)]
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
        assert report.parts_deleted == 0, "parts stored before 0008 count as used on the upgrade day"
        assert await queries.session(requests[0].request_id) is None
        assert await queries.count(TraceFilters()) == 4  # 3 migrated + the new one
    finally:
        await store.close()

    await asyncio.to_thread(command.downgrade, alembic_config(url), PREVIOUS)
    indexes_down, _, (_, parts_down) = await _snapshot(url)
    assert indexes_down == indexes_before, "the indexes of 0007, by name and definition"
    assert parts_down == steps_before[1]

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


async def test_upgrade_then_downgrade_keeps_every_row_and_index(db_at_0007: str) -> None:
    url = db_at_0007
    requests = [RerankRequest.model_validate(r) for r in make_requests(3, seed=13, prefix="round")]
    await _fill(url, requests, [35, 2, 0])
    before = await _snapshot(url)
    await upgrade_async(url)
    await asyncio.to_thread(command.downgrade, alembic_config(url), PREVIOUS)
    assert await _snapshot(url) == before
    await upgrade_async(url)  # and up again
    _, rows, data = await _snapshot(url)
    assert (rows, data) == (before[1], before[2])


def test_sqlite_store_with_parts_upgrades_and_downgrades(tmp_path) -> None:
    """SQLite stays unpartitioned; its prompt_parts with rows gains last_used (the table is copied:
    SQLite cannot add a column with a non-constant default in place) and loses it again."""
    import sqlite3

    path = tmp_path / "store.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url, PREVIOUS)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO prompt_parts (hash, body) VALUES ('h1', '{\"role\": \"system\"}')")
    upgrade(url)
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT hash, body, last_used FROM prompt_parts").fetchall()
    assert [(h, b) for h, b, _ in rows] == [("h1", '{"role": "system"}')]
    assert rows[0][2] is not None  # the day of the upgrade (SQLite CURRENT_DATE, UTC)
    command.downgrade(alembic_config(url), PREVIOUS)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT * FROM prompt_parts").fetchall() == [("h1", '{"role": "system"}')]
