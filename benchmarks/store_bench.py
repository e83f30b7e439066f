"""Bytes the trace store keeps per step and per session, for the sample requests.

Runs `--requests` sample requests (worker/samples.py) through the offline path with a store (the
same Store and step writer the worker uses) against sim-llm (SIMULATED answers, no latency), into a
fresh PostgreSQL database, then prints pg_total_relation_size of each table (heap, TOAST, indexes,
free-space and visibility maps) divided by its rows, as written and after VACUUM FULL, and the
average row alone (pg_column_size of the row: tuple header and values, no index, no page slack).

`--form full` writes the steps as before prompt parts were stored once (every call's messages and
response_format inline, lists and repair counts in full, calls not deflated), for a comparison
on the same code (sessions are written the current way in both forms).

    .venv/bin/python benchmarks/store_bench.py --requests 300 [--form full]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from worker.samples import sample_requests

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "llm4rerank")
sys.path.insert(0, str(REPO / "tests"))
from service_kit import free_port, wait_http  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
TARGET_STEP = 1024
TABLES = ("sessions", "steps", "prompt_parts")


def full_form() -> None:
    """Steps stored the old way: calls kept whole in every step, lists and counts in full."""
    import worker.store.store as store_module

    store_module.split_calls = lambda calls, parts: [dict(c) for c in calls]  # type: ignore[assignment]
    store_module.deflate_calls = lambda calls: calls  # type: ignore[assignment]
    store_module.pack_step = lambda row: row  # type: ignore[assignment]


async def run(requests: int, url: str, sim_url: str) -> None:
    from worker.config import Settings
    from worker.offline import rerank_lines
    from worker.policies.chat import OpenAIChat
    from worker.service import Reranker
    from worker.store.migrate import upgrade_async
    from worker.store.store import Store

    await upgrade_async(url)
    settings = Settings(database_url=url, llm_base_url=sim_url, llm_model="sim-llm-simulated")
    chat = OpenAIChat(settings)
    store = Store(url)
    lines = [orjson.dumps(r) for r in sample_requests(requests, prefix="bench")]
    try:
        stats = await rerank_lines(
            Reranker(settings, chat, policy="llm"), lines, io.BytesIO(), concurrency=16, store=store
        )
    finally:
        await chat.close()
        await store.close()
    if stats.ok + stats.degraded != requests:
        raise SystemExit(f"not every request finished: {stats}")


async def _bytes(conn: Any, table: str) -> int:
    """Bytes of `table`; for a partitioned one, of its partitions that hold rows (an empty partition
    made ahead is a fixed cost, a few 8 KB pages per index, whatever the traffic)."""
    leaves = await conn.fetch("SELECT relid::text AS name FROM pg_partition_tree($1) WHERE isleaf", table)
    names = [r["name"] for r in leaves] or [table]
    held = [n for n in names if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {n})")]
    return sum([await conn.fetchval("SELECT pg_total_relation_size($1)", n) for n in held])


async def sizes(db: str) -> dict[str, Any]:
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        out: dict[str, Any] = {}
        for table in TABLES:
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            out[table] = (
                (
                    await conn.fetchval(f"SELECT count(*) FROM {table}"),
                    await _bytes(conn, table),
                    await conn.fetchval(f"SELECT avg(pg_column_size(t.*)) FROM {table} t"),
                )
                if exists
                else (0, 0, None)
            )
        return out
    finally:
        await conn.close()


def report(title: str, s: dict[str, Any]) -> None:
    (n_sessions, b_sessions, r_sessions), (n_steps, b_steps, r_steps), (n_parts, b_parts, _) = (
        s[t] for t in TABLES
    )
    per_step = b_steps / n_steps
    print(
        f"{title}: {n_sessions} sessions, {n_steps} steps ({n_steps / n_sessions:.2f} per "
        f"session), {n_parts} prompt parts"
    )
    print(
        f"  steps table per step             {per_step:8.0f} B   target <= {TARGET_STEP} B  "
        f"{'MET' if per_step <= TARGET_STEP else 'NOT MET'}"
    )
    print(
        f"  step row alone (pg_column_size)  {float(r_steps):8.0f} B   target <= {TARGET_STEP} B  "
        f"{'MET' if r_steps <= TARGET_STEP else 'NOT MET'}"
    )
    print(f"  session row alone                {float(r_sessions):8.0f} B")
    print(f"  steps + prompt_parts per step    {(b_steps + b_parts) / n_steps:8.0f} B")
    print(f"  sessions table per session       {b_sessions / n_sessions:8.0f} B")
    print(f"  prompt_parts per session         {b_parts / n_sessions:8.0f} B")
    print(f"  all three tables per session     {(b_sessions + b_steps + b_parts) / n_sessions:8.0f} B")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--form", choices=("lean", "full"), default="lean")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if args.form == "full":
        full_form()
    db = f"llm4rerank_store_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'CREATE DATABASE "{db}"')
    port = free_port()
    sim = subprocess.Popen(
        [CLI, "sim-llm", "--port", str(port), "--seed", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc=sim)
        await run(
            args.requests, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}", f"http://127.0.0.1:{port}/v1"
        )
        print(f"form={args.form}: pg_total_relation_size (heap + TOAST + indexes + maps) / rows")
        report("as written", await sizes(db))
        conn = await asyncpg.connect(f"{PG}/{db}")
        await conn.execute("VACUUM FULL sessions")
        await conn.execute("VACUUM FULL steps")
        if (await sizes(db))["prompt_parts"][0]:
            await conn.execute("VACUUM FULL prompt_parts")
        await conn.close()
        report("after VACUUM FULL", await sizes(db))
    finally:
        sim.terminate()
        sim.wait(10)
        if not args.keep:
            await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
