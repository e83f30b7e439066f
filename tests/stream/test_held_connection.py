"""The step journal's held connection: kept across writes, replaced after the database drops it
(the journal's retry then commits the step, nothing lost), and never shared by two writes at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import func, select
from stream_helpers import make_requests

from worker.engine.steps import StepRecord
from worker.schemas import RerankRequest
from worker.store.journal import GroupCommitWriter
from worker.store.store import Store
from worker.store.tables import sessions, steps

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def held_pg(fresh_database):
    with fresh_database("llm4rerank_test_held") as (name, url):
        yield name, url


@pytest.fixture
async def store(held_pg: tuple[str, str]):
    s = Store(held_pg[1])
    yield s
    await s.close()


async def _session_ids(store: Store, prefix: str, n: int) -> list[int]:
    requests = [RerankRequest.model_validate(r) for r in make_requests(n, seed=5, prefix=prefix)]
    await store.receive([(r, None) for r in requests])
    async with store.engine.connect() as conn:
        found = await conn.execute(
            select(sessions.c.id).where(sessions.c.request_id.in_([r.request_id for r in requests]))
        )
        return sorted(found.scalars())


def _step(n: int) -> StepRecord:
    return StepRecord(step=n, node="accuracy", policy="llm", ranking=["a", "b"])


async def _terminate(database: str) -> int:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}")
    try:
        return int(
            await conn.fetchval(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where datname = $1 and pid <> pg_backend_pid()",
                database,
            )
        )
    finally:
        await conn.close()


async def _stored(store: Store, session_id: int) -> int:
    async with store.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).where(steps.c.session_id == session_id))).scalar_one()
        )


async def test_writes_keep_one_connection(store: Store) -> None:
    (sid,) = await _session_ids(store, "held1", 1)
    pool = store.engine.pool
    for n in range(1, 11):
        await store.add_steps([(sid, _step(n))])
        assert pool.checkedout() == 1  # held between writes, not checked in and out again
    assert await _stored(store, sid) == 10
    await store.close()
    assert pool.checkedout() == 0


async def test_a_dropped_connection_is_replaced_and_the_step_committed(
    store: Store, held_pg: tuple[str, str]
) -> None:
    (sid,) = await _session_ids(store, "held2", 1)
    writer = GroupCommitWriter(store)
    await writer.write(sid, _step(1))
    assert await _terminate(held_pg[0]) >= 1  # the held connection among them
    await asyncio.wait_for(writer.write(sid, _step(2)), 30)  # retried on a fresh connection
    await asyncio.wait_for(writer.write(sid, _step(3)), 30)
    await writer.stop()
    assert await _stored(store, sid) == 3


async def test_concurrent_writes_do_not_share_it(store: Store) -> None:
    ids = await _session_ids(store, "held3", 8)
    await asyncio.gather(*(store.add_steps([(sid, _step(n))]) for sid in ids for n in (1, 2, 3)))
    for sid in ids:
        assert await _stored(store, sid) == 3
