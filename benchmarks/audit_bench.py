"""Audit queries on a large trace store, through the audit HTTP API.

1. Generates a store of `--sessions` sessions (default 1,000,000) and about three steps each into a
   fresh PostgreSQL database migrated to head, bulk-loaded with COPY (asyncpg
   copy_records_to_table). The rows are synthetic (seeded), shaped like the worker's: sample-request
   users and goals, 30 days of receipt times, a model and prompt version per era, a few statuses,
   replays of earlier sessions, walks over the paper's nodes with lean calls.
2. Starts `llm4rerank audit-api` as the CLI does (read-only role, bearer token) and times, over
   HTTP, `trace list` with each filter the API offers (first page and a page further by cursor)
   and `trace show` (a session, and one step's calls). p50/p95 per query, 50 ms p95 target.

    .venv/bin/python benchmarks/audit_bench.py --sessions 1000000
    .venv/bin/python benchmarks/audit_bench.py --db NAME     # reuse a store generated before (--keep)

`--explain` prints EXPLAIN ANALYZE of the list queries (the SQL the API runs) instead of timing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from worker.engine.nodes import ALL_NODES
from worker.store.parts import part_hash

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "llm4rerank")
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "audit"))
from audit_helpers import reader_statements  # noqa: E402
from service_kit import free_port, wait_http  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
TARGET_P95_MS = 50.0
START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 30
USERS = 50_000
GOALS = [
    "Mainly focus on accuracy, followed by diversity",
    "Focus on diversity",
    "Focus on fairness",
    "Consider accuracy, diversity and fairness in a balanced way",
]
MODELS = [
    ("meta-llama/Llama-2-13b-chat-hf", "default-f37d74cf573a"),
    ("meta-llama/Llama-2-13b-chat-hf", "paper-0b1e4c2d9a77"),
    ("Qwen/Qwen2.5-7B-Instruct", "default-f37d74cf573a"),
]
STATUSES = ["ok"] * 90 + ["degraded"] * 7 + ["failed"] * 2 + ["running"]
REPLAY_SHARE = 0.02
BATCH = 20_000
PARTS = ({"role": "system", "content": "Rerank one user's list (synthetic)."}, {"type": "json_object"})
SESSION_COLUMNS = (
    "id",
    "request_id",
    "user_id",
    "goal",
    "request",
    "status",
    "model",
    "prompt_version",
    "policy",
    "path",
    "final_ranking",
    "reason",
    "llm_calls",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "received_at",
    "started_at",
    "completed_at",
    "published_at",
    "attempts",
    "source_topic",
    "source_partition",
    "source_offset",
    "replay_of",
    "replay_mode",
    "deployment",
    "result_topic",
    "crashes",
    "request_hash",
    "request_text",
    "receipt_at",
)
STEP_COLUMNS = (
    "id",
    "session_id",
    "step",
    "node",
    "policy",
    "ranking",
    "next_node",
    "offered",
    "pool_size",
    "calls",
    "notes",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "retries",
    "cached_tokens",
    "created_at",
    "session_received_at",
)


def walk(rng: random.Random) -> list[str]:
    """A node path: mostly one to three aspect nodes, sometimes a backward, then stop."""
    path = [rng.choice(("accuracy", "accuracy", "diversity", "fairness"))]
    while rng.random() < 0.5 and len(path) < 5:
        path.append("backward" if rng.random() < 0.03 else rng.choice(("accuracy", "diversity", "fairness")))
    return [*path, "stop"]


def rows(n: int, seed: int) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Batches of (session rows, step rows), ids in receipt order."""
    rng = random.Random(seed)
    span = DAYS * 86400 / n
    step_id = 0
    system_ref, format_ref = ("sha256:" + part_hash(body) for body in PARTS)
    sess: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    for i in range(1, n + 1):
        at = START + timedelta(seconds=i * span)
        items = [f"s{i}-m{k}" for k in range(10)]
        user = f"u{rng.randrange(USERS)}"
        goal = GOALS[i % len(GOALS)]
        model, version = MODELS[min(len(MODELS) - 1, i * len(MODELS) // n)]
        status = rng.choice(STATUSES)
        replay_of = f"req-{rng.randrange(1, i):07d}" if i > 1 and rng.random() < REPLAY_SHARE else None
        path = walk(rng)
        final = rng.sample(items, len(items))
        request = {
            "request_id": f"req-{i:07d}",
            "goal": goal,
            "user": {"user_id": user},
            "candidates": [{"item_id": it} for it in items],
        }
        text = orjson.dumps(request).decode()
        done = at + timedelta(seconds=2)
        finished = status != "running"
        sess.append(
            (
                i,
                request["request_id"],
                user,
                goal,
                text,
                status,
                model if finished else None,
                version if finished else None,
                "llm",
                orjson.dumps(path).decode(),
                orjson.dumps(final).decode() if finished else None,
                None,
                len(path) - 1,
                900 * len(path),
                60 * len(path),
                2000,
                at,
                at,
                done if finished else None,
                done if finished else None,
                1,
                "rerank.requests",
                i % 6,
                i // 6,
                replay_of,
                "live" if replay_of else None,
                "workers",
                "rerank.results",
                0,
                hashlib.sha256(text.encode()).hexdigest(),
                text,
                at,
            )
        )
        for number, node in enumerate(path, start=1):
            step_id += 1
            llm = node != "stop"
            calls = (
                [
                    {
                        "messages": [system_ref, {"role": "user", "content": f"Node: {node}"}],
                        "response_format": format_ref,
                        "raw": "{}",
                        "prompt_tokens": 900,
                    }
                ]
                if llm
                else []
            )
            steps.append(
                (
                    step_id,
                    i,
                    number,
                    node,
                    "llm",
                    orjson.dumps(final).decode() if llm else None,
                    path[number] if number < len(path) else None,
                    '["accuracy", "diversity", "fairness", "backward", "stop"]',
                    number,
                    orjson.dumps(calls).decode(),
                    "[]",
                    900 if llm else 0,
                    60 if llm else 0,
                    500.0,
                    0,
                    0,
                    at + timedelta(milliseconds=500 * number),
                    at,
                )
            )
        if len(sess) >= BATCH:
            yield sess, steps
            sess, steps = [], []
    if sess:
        yield sess, steps


async def _partitions(db: str) -> None:
    """The daily partitions the generated sessions fall in (PostgreSQL store, migration 0008)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from worker.store.partitions import ensure_partitions

    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}")
    days = [START + timedelta(days=k) for k in range(DAYS + 1)]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: ensure_partitions(c, "day", 1, extra=days))
    finally:
        await engine.dispose()


async def generate(db: str, n: int) -> None:
    started = time.monotonic()
    conn = await asyncpg.connect(f"{PG}/{db}")
    loaded_steps = 0
    # the migrations' secondary indexes are built once after the load (same definitions)
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('sessions', 'steps') "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
    )
    for index in indexes:
        await conn.execute(f'DROP INDEX "{index["indexname"]}"')
    await _partitions(db)
    try:
        for sess, steps in rows(n, seed=1):
            await conn.copy_records_to_table("sessions", records=sess, columns=SESSION_COLUMNS)
            await conn.copy_records_to_table("steps", records=steps, columns=STEP_COLUMNS)
            loaded_steps += len(steps)
        await conn.copy_records_to_table(
            "prompt_parts",
            records=[(part_hash(b), orjson.dumps(b).decode()) for b in PARTS],
            columns=("hash", "body"),
        )
        for index in indexes:  # on a partitioned table: the parent's index, built on every partition
            await conn.execute(index["indexdef"].replace(" ON ONLY ", " ON "))
        await conn.execute("SELECT setval('sessions_id_seq', $1)", n)
        await conn.execute("SELECT setval('steps_id_seq', $1)", loaded_steps)
        await conn.execute("VACUUM ANALYZE sessions")
        await conn.execute("VACUUM ANALYZE steps")
    finally:
        await conn.close()
    print(f"generated {n} sessions, {loaded_steps} steps in {time.monotonic() - started:.0f} s")


async def queries(db: str, n: int) -> list[tuple[str, str]]:
    """(name, URL path with query string) of each measured request."""
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        user = await conn.fetchval("SELECT user_id FROM sessions WHERE id = $1", n // 2)
        replayed = await conn.fetchval(
            "SELECT replay_of FROM sessions WHERE replay_of IS NOT NULL ORDER BY id DESC LIMIT 1"
        )
        item = await conn.fetchval("SELECT final_ranking->>0 FROM sessions WHERE id = $1", n // 3)
        middle = await conn.fetchval("SELECT received_at FROM sessions WHERE id = $1", n // 2)
        show = await conn.fetchval("SELECT request_id FROM sessions WHERE id = $1", n // 4)
    finally:
        await conn.close()
    day = timedelta(days=1)
    since, until = (middle - day).isoformat(), middle.isoformat()
    model, version = MODELS[0]
    q = httpx.QueryParams
    out = [
        ("list (no filter)", "/api/sessions?" + str(q(limit=50))),
        ("list order=asc", "/api/sessions?" + str(q(limit=50, order="asc"))),
        ("list user", "/api/sessions?" + str(q(user=user))),
        ("list status=failed", "/api/sessions?" + str(q(status="failed"))),
        ("list status=running", "/api/sessions?" + str(q(status="running"))),
        ("list since/until (1 day)", "/api/sessions?" + str(q(since=since, until=until))),
        ("list since (open)", "/api/sessions?" + str(q(since=since))),
        ("list model", "/api/sessions?" + str(q(model=model))),
        ("list prompt_version", "/api/sessions?" + str(q(prompt_version=version))),
        ("list model+prompt_version", "/api/sessions?" + str(q(model=model, prompt_version=version))),
        ("list replay_of", "/api/sessions?" + str(q(replay_of=replayed))),
        ("list replays=only", "/api/sessions?" + str(q(replays="only"))),
        ("list replays=exclude", "/api/sessions?" + str(q(replays="exclude"))),
        ("list goal substring", "/api/sessions?" + str(q(goal="balanced"))),
        ("list item in top 3", "/api/sessions?" + str(q(item=item, top_k=3))),
        (
            "list request_id x3",
            "/api/sessions?"
            + str(q([("request_id", show), ("request_id", user), ("request_id", "req-0000001")])),
        ),
    ]
    out += [(f"list node={node}", "/api/sessions?" + str(q(node=node))) for node in ALL_NODES]
    out += [
        (
            "list status+node+1 day",
            "/api/sessions?" + str(q(status="degraded", node="fairness", since=since, until=until)),
        )
    ]
    out += [
        ("show session", f"/api/sessions/{show}"),
        ("show step calls", f"/api/sessions/{show}/steps/1/calls"),
    ]
    return out


def timed(client: httpx.Client, path: str, repeat: int) -> tuple[list[float], int]:
    """Milliseconds per request; the first page's cursor is followed once per round too."""
    times: list[float] = []
    items = 0
    for _ in range(repeat):
        t = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - t) * 1000)
        response.raise_for_status()
        items = len(response.json().get("items", [])) if path.startswith("/api/sessions?") else 1
    return times, items


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(url: str, token: str, named: list[tuple[str, str]], repeat: int) -> None:
    print(f"{'query':34} {'rows':>5} {'p50 ms':>8} {'p95 ms':>8}  target p95 <= {TARGET_P95_MS:.0f} ms")
    misses = 0
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=60) as client:
        for name, path in named:
            timed(client, path, 2)  # warm: plan cache, pages
            times, items = timed(client, path, repeat)
            report(name, items, times)
            misses += pct(times, 0.95) > TARGET_P95_MS
            if path.startswith("/api/sessions?"):
                cursor = client.get(path).json().get("next_cursor")
                if cursor:
                    paged = f"{path}&{httpx.QueryParams(cursor=cursor)}"
                    timed(client, paged, 2)
                    times, items = timed(client, paged, repeat)
                    report("  ... next page", items, times)
                    misses += pct(times, 0.95) > TARGET_P95_MS
    print(f"{misses} queries over the p95 target")


def report(name: str, items: int, times: list[float]) -> None:
    p95 = pct(times, 0.95)
    print(
        f"{name:34} {items:5d} {statistics.median(times):8.1f} {p95:8.1f}  "
        f"{'ok' if p95 <= TARGET_P95_MS else 'OVER'}"
    )


async def explain(db: str, named: list[tuple[str, str]]) -> None:
    """EXPLAIN ANALYZE of the SQL TraceQueries.list runs for each list query (first page)."""
    from sqlalchemy import bindparam, text
    from sqlalchemy.dialects import postgresql

    from worker.audit.db import read_only_engine
    from worker.audit.filters import parse_filters
    from worker.audit.queries import conditions, page_query

    engine = read_only_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}")  # the API's settings
    try:
        for name, path in named:
            if not path.startswith("/api/sessions?"):
                continue
            params = httpx.QueryParams(path.split("?", 1)[1])
            values: dict[str, Any] = {k: v for k, v in params.items() if k not in ("limit", "order")}
            values["request_ids"] = tuple(params.get_list("request_id"))
            values.pop("request_id", None)
            if "top_k" in values:
                values["top_k"] = int(values["top_k"])
            order = params.get("order", "desc")
            query = page_query(conditions(parse_filters(**values)), 51, order)  # type: ignore[arg-type]
            compiled = query.compile(
                dialect=postgresql.dialect(paramstyle="named"), compile_kwargs={"render_postcompile": True}
            )
            statement = text("EXPLAIN (ANALYZE, BUFFERS) " + compiled.string.replace("::", " ::")).bindparams(
                *(
                    bindparam(k, v, type_=compiled.binds[k].type if k in compiled.binds else None)
                    for k, v in compiled.params.items()
                    if f":{k}" in compiled.string
                )
            )
            async with engine.connect() as conn:
                plan = (await conn.execute(statement)).scalars().all()
            print(f"== {name}\n" + "\n".join(plan))
    finally:
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=40, help="timed requests per query")
    parser.add_argument("--db", help="an existing generated database (skips generation)")
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument("--explain", action="store_true", help="print query plans, no timing")
    args = parser.parse_args()
    db = args.db or f"llm4rerank_audit_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    if not args.db:
        from worker.store.migrate import upgrade_async

        await admin.execute(f'CREATE DATABASE "{db}"')
        await upgrade_async(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}")
        await generate(db, args.sessions)
        print(f"database {db}")
    conn = await asyncpg.connect(f"{PG}/{db}")
    await conn.execute(reader_statements(db))
    n = await conn.fetchval("SELECT max(id) FROM sessions")
    await conn.close()
    named = await queries(db, n)
    try:
        if args.explain:
            await explain(db, named)
            return
        token = "bench-" + uuid.uuid4().hex
        port = free_port()
        env = {
            **os.environ,
            "LLM4RERANK_AUDIT_TOKENS": token,
            "LLM4RERANK_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
        }
        api = subprocess.Popen(
            [CLI, "audit-api", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=api)
            print(
                f"{n} sessions; audit API (read-only role) timed over HTTP, {args.repeat} requests "
                "per query after 2 warm-up requests; limit 50 per page"
            )
            measure(f"http://127.0.0.1:{port}", token, named, args.repeat)
        finally:
            api.terminate()
            api.wait(10)
    finally:
        if not args.keep and not args.db:
            await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
