"""SIGTERM during a run: the worker stops consuming, lets walks in flight finish or releases them,
flushes the outbox and exits 0; a new worker finishes the rest, and nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson
import pytest
from fault_kit import check_run, finished, infra, owns_services, send, until_finished
from service_kit import free_port
from stream_helpers import collect, make_requests, produce, query

N = 120


async def test_sigterm_drains_and_exits_cleanly(sim_llm, stream_env, start_worker):
    sim = sim_llm("--seed", "6", "--latency-ms", "100", "--max-concurrent", "4")
    env = {**stream_env, "LLM4RERANK_LLM_BASE_URL": sim.base_url, "LLM4RERANK_CONCURRENCY": "16"}
    url = env["LLM4RERANK_DATABASE_URL"]
    requests = make_requests(N, seed=31, prefix="term")
    first = start_worker(env)
    await produce(
        env["LLM4RERANK_KAFKA_BOOTSTRAP"],
        env["LLM4RERANK_REQUEST_TOPIC"],
        [orjson.dumps(r) for r in requests],
    )
    while (await _finished(url)) < 20:
        await asyncio.sleep(0.2)

    started = time.monotonic()
    code = await asyncio.to_thread(first.kill, signal.SIGTERM)
    assert code == 0
    assert time.monotonic() - started < 45, "shutdown took longer than the grace period allows"
    log = first.log.read_text()
    assert "stopped cleanly" in log
    held = await query(
        url, "select count(*) as n from sessions where request_id like 'term-%' and lease_owner is not null"
    )
    assert held[0]["n"] == 0, "a stopped worker must not keep leases"
    assert (await _finished(url)) < N, "the run ended before SIGTERM; nothing was tested"

    start_worker(env)
    results = await collect(
        env["LLM4RERANK_KAFKA_BOOTSTRAP"], env["LLM4RERANK_RESULT_TOPIC"], until=N, timeout_s=180
    )
    assert {k for k, _ in results} == {r["request_id"] for r in requests}


async def _finished(url: str) -> int:
    rows = await query(
        url,
        "select count(*) as n from sessions where request_id like 'term-%' "
        "and status in ('ok', 'degraded', 'failed')",
    )
    return rows[0]["n"]


# ---------------------------------------------------------------------------------------------
# SIGTERM in every state: the process ends within the grace period plus the stated margin


GRACE_S = 3.0
STOP_MARGIN_S = 5.0  # worker.stream.app.STOP_MARGIN_S


async def _sigterm(worker, url: str | None = None) -> float:
    """SIGTERM, and the seconds until the process is gone."""
    started = time.monotonic()
    code = await asyncio.to_thread(worker.kill, signal.SIGTERM)
    took = time.monotonic() - started
    assert code in (0, 1), f"worker ended with {code}"
    return took


@pytest.fixture
def owned_services() -> None:
    if not owns_services():
        pytest.skip("Kafka or PostgreSQL were not started by infra/up.sh; not stopping them")


async def test_sigterm_ends_in_time_in_every_state(
    owned_services, sim_llm, stream_env, start_worker, tmp_path
):
    calls_log = tmp_path / "calls.jsonl"
    sim = sim_llm("--seed", "7", "--latency-ms", "100", "--max-concurrent", "8", "--call-log", str(calls_log))
    env = {
        **stream_env,
        "LLM4RERANK_LLM_BASE_URL": sim.base_url,
        "LLM4RERANK_CONCURRENCY": "8",
        "LLM4RERANK_SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    url = env["LLM4RERANK_DATABASE_URL"]
    requests = make_requests(160, seed=41, prefix="states")
    bound = GRACE_S + STOP_MARGIN_S + 2.0
    took: dict[str, float] = {}

    # starting, its LLM endpoint unreachable (the worker waits for it)
    dead_llm = {**env, "LLM4RERANK_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    worker = start_worker(dead_llm)
    await _logged(worker, "until it answers, requests get the heuristic")
    took["starting, LLM unreachable"] = await _sigterm(worker)

    # starting while PostgreSQL is down
    infra("postgres/pg.sh", "stop")
    try:
        worker = start_worker(env)
        await _logged(worker, "waiting for PostgreSQL")
        took["starting, PostgreSQL down"] = await _sigterm(worker)
    finally:
        infra("postgres/pg.sh", "start")

    # a backlog: far more requests queued than the worker runs at once
    await send(env, requests)
    worker = start_worker(env)
    await until_finished(url, "states", 10, timeout_s=120)
    took["backlog"] = await _sigterm(worker)

    # the LLM failing every call (from before the worker starts) while walks are in flight
    sim.faults(error_rate=1.0)
    worker = start_worker(env)
    await _logged(worker, "LLM endpoint failing at start")
    await _until_running(url)
    await asyncio.sleep(1)
    took["LLM down"] = await _sigterm(worker)
    sim.faults(error_rate=0.0)

    # PostgreSQL down while walks are in flight
    worker = start_worker(env)
    await until_finished(url, "states", await finished(url, "states") + 5)
    infra("postgres/pg.sh", "stop")
    try:
        await asyncio.sleep(1)
        took["PostgreSQL down"] = await _sigterm(worker)
    finally:
        infra("postgres/pg.sh", "start")

    # the broker down while walks are in flight
    worker = start_worker(env)
    await until_finished(url, "states", await finished(url, "states") + 5)
    infra("kafka/kafka.sh", "kill")
    try:
        await asyncio.sleep(1)
        took["broker down"] = await _sigterm(worker)
    finally:
        infra("kafka/kafka.sh", "start")
        infra("kafka/kafka.sh", "wait", "90")

    for state, seconds in took.items():
        print(f"FAULT MATRIX | SIGTERM, {state} | ended after {seconds:.1f} s (bound {bound:.0f} s)")
    assert all(seconds <= bound for seconds in took.values()), took

    # and nothing was lost or repeated on the way
    start_worker(env)
    await check_run("SIGTERM in every state", env, requests, calls_log)


async def _logged(worker, text: str, timeout_s: float = 60) -> None:
    """Wait until the worker is in the state its log names (its signal handlers are in place)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while text not in worker.log.read_text(errors="replace"):
        assert worker.alive() and loop.time() < deadline, f"the worker never logged {text!r}"
        await asyncio.sleep(0.1)


async def _until_running(url: str, timeout_s: float = 90) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        rows = await query(
            url,
            "select count(*) as n from sessions where request_id like "
            "'states-%' and status = 'running' and lease_owner is not null",
        )
        if rows[0]["n"] > 0:
            return
        assert loop.time() < deadline, "no walk started"
        await asyncio.sleep(0.1)
