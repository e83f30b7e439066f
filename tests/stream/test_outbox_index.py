"""The outbox's pick reads only the results still to publish (migration 0011), on real PostgreSQL:
its cost follows the unpublished results, not every session the partition holds."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from alembic import command

from worker.store.hot import OUTBOX
from worker.store.migrate import alembic_config, upgrade_async

pytestmark = pytest.mark.integration
PUBLISHED = 20_000

LOAD = f"""
INSERT INTO sessions (request_id, user_id, goal, status, received_at, attempts, completed_at,
                      published_at, source_topic, result)
SELECT 'old-' || g, 'u', 'accuracy', 'ok', now() - interval '1 hour' + g * interval '1 ms', 1,
       now() - interval '1 hour' + g * interval '1 ms', now(), 'requests', '{{}}'
FROM generate_series(1, {PUBLISHED}) g;
INSERT INTO sessions (request_id, user_id, goal, status, received_at, attempts, completed_at,
                      source_topic, result)
SELECT 'new-' || g, 'u', 'accuracy', 'ok', now() + g * interval '1 ms', 1,
       now() + g * interval '1 ms', CASE WHEN g = 4 THEN NULL ELSE 'requests' END, '{{}}'
FROM generate_series(1, 4) g;
ANALYZE sessions;
"""


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _pick(conn: asyncpg.Connection) -> tuple[list[str], int]:
    """(request_ids the pick returns, buffers its plan touched)."""
    statement = OUTBOX[False]
    args = statement.args({"deployment": None, "limit": 500})
    async with conn.transaction():
        found = [r["request_id"] for r in await conn.fetch(statement.sql, *args)]
    async with conn.transaction():
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement.sql}", *args)
    top: dict[str, Any] = orjson.loads(plan)[0]["Plan"]
    return found, int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))


@pytest.fixture
def outbox_db_url(fresh_database):
    with fresh_database("llm4rerank_test_outbox") as (_, url):
        yield url


async def test_the_pick_reads_the_unpublished_results_only(outbox_db_url: str) -> None:
    url = outbox_db_url
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0010_node_visits")
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute(LOAD)
        before, old_buffers = await _pick(conn)
        await upgrade_async(url)
        await conn.execute("ANALYZE sessions")
        after, new_buffers = await _pick(conn)
    finally:
        await conn.close()
    # the same three results, oldest first; the offline one (no source topic) is never published
    assert before == after == ["new-1", "new-2", "new-3"]
    assert old_buffers > 60  # the old index walked: 20,000 entries, about 80 pages
    assert new_buffers < 20  # measured: 5
