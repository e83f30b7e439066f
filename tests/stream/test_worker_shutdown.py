"""SIGTERM during a run: the worker stops consuming, lets walks in flight finish or releases them,
flushes the outbox and exits 0; a new worker finishes the rest, and nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson
from stream_helpers import collect, make_requests, produce, query

N = 120


async def test_sigterm_drains_and_exits_cleanly(sim_llm, stream_env, start_worker):
    sim = sim_llm("--seed", "6", "--latency-ms", "100", "--max-concurrent", "4")
    env = {**stream_env, "LLM4RERANK_LLM_BASE_URL": sim.base_url, "LLM4RERANK_CONCURRENCY": "16"}
    url = env["LLM4RERANK_DATABASE_URL"]
    requests = make_requests(N, seed=31, prefix="term")
    first = start_worker(env)
    await produce(env["LLM4RERANK_KAFKA_BOOTSTRAP"], env["LLM4RERANK_REQUEST_TOPIC"],
                  [orjson.dumps(r) for r in requests])
    while (await _finished(url)) < 20:
        await asyncio.sleep(0.2)

    started = time.monotonic()
    code = await asyncio.to_thread(first.kill, signal.SIGTERM)
    assert code == 0
    assert time.monotonic() - started < 45, "shutdown took longer than the grace period allows"
    log = first.log.read_text()
    assert "stopped cleanly" in log
    held = await query(url, "select count(*) as n from sessions where request_id like 'term-%' "
                            "and lease_owner is not null")
    assert held[0]["n"] == 0, "a stopped worker must not keep leases"
    assert (await _finished(url)) < N, "the run ended before SIGTERM; nothing was tested"

    start_worker(env)
    results = await collect(env["LLM4RERANK_KAFKA_BOOTSTRAP"], env["LLM4RERANK_RESULT_TOPIC"],
                            until=N, timeout_s=180)
    assert {k for k, _ in results} == {r["request_id"] for r in requests}


async def _finished(url: str) -> int:
    rows = await query(url, "select count(*) as n from sessions where request_id like 'term-%' "
                            "and status in ('ok', 'degraded', 'failed')")
    return rows[0]["n"]
