"""SIGKILL the worker at seeded random moments during a run of a few hundred requests, restart it,
and show that nothing was lost and no stored step was executed twice."""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
from collections import defaultdict
from datetime import datetime

import orjson
from stream_helpers import collect, make_requests, produce, query

N = 240


async def test_sigkill_at_random_moments_loses_nothing(sim_llm, stream_env, start_worker, tmp_path):
    calls_log = tmp_path / "calls.jsonl"
    sim = sim_llm("--seed", "5", "--latency-ms", "60", "--latency-jitter-ms", "40",
                  "--max-concurrent", "32", "--malformed-rate", "0.1", "--call-log", str(calls_log))
    env = {**stream_env, "LLM4RERANK_LLM_BASE_URL": sim.base_url, "LLM4RERANK_CONCURRENCY": "32"}
    requests = make_requests(N, seed=11, prefix="crash")
    bootstrap = env["LLM4RERANK_KAFKA_BOOTSTRAP"]
    await produce(bootstrap, env["LLM4RERANK_REQUEST_TOPIC"], [orjson.dumps(r) for r in requests],
                  [r["request_id"].encode() for r in requests])
    url = env["LLM4RERANK_DATABASE_URL"]
    rng = random.Random(2024)
    kills = 0
    for _ in range(4):
        worker = start_worker(env)
        await _until_progress(url, rng.randint(20, 50))
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        assert worker.kill(signal.SIGKILL) == -signal.SIGKILL
        kills += 1
    start_worker(env)

    # duplicates (re-published results) count toward `until`: wait for every request_id
    wanted = {r["request_id"] for r in requests}
    deadline = asyncio.get_running_loop().time() + 240
    while True:
        results = await collect(bootstrap, env["LLM4RERANK_RESULT_TOPIC"], until=N, timeout_s=240)
        if {key for key, _ in results} >= wanted or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(1.0)
    rankings: dict[str, list[list[str]]] = defaultdict(list)
    for key, value in results:
        rankings[key].append(value["ranking"])
    assert set(rankings) == {r["request_id"] for r in requests}, "a request has no result"
    for key, seen in rankings.items():
        assert all(r == seen[0] for r in seen), f"{key} was published with different rankings"

    sessions = await query(url, "select request_id, status, result, attempts from sessions "
                                "where request_id like 'crash-%'")
    assert len(sessions) == N
    assert all(s["status"] in ("ok", "degraded") and s["result"] for s in sessions)
    assert max(s["attempts"] for s in sessions) > 1, "no session was ever resumed: kills too late"
    stored = {s["request_id"]: s["result"]["ranking"] for s in sessions}
    assert all(rankings[k][0] == v for k, v in stored.items())

    # no stored step executed twice: after a step's LLM call was stored, that prompt never
    # reached the LLM again (resumes serve it from the store)
    served: dict[str, list[float]] = defaultdict(list)
    for line in calls_log.read_bytes().splitlines():
        entry = orjson.loads(line)
        served[entry["prompt"]].append(entry["t"])
    steps = await query(url, "select s.calls, s.created_at from steps s join sessions x on "
                             "x.id = s.session_id where x.request_id like 'crash-%'")
    checked = 0
    for step in steps:
        stored_at = step["created_at"].timestamp() if isinstance(step["created_at"], datetime) else 0
        for call in step["calls"] or []:
            digest = hashlib.sha256(orjson.dumps(call["messages"])).hexdigest()
            assert served[digest], "a stored call never reached the LLM"
            later = [t for t in served[digest] if t > stored_at + 0.001]
            assert not later, "a stored step's LLM call was executed again after it was stored"
            checked += 1
    assert checked > N
    assert kills == 4


async def _until_progress(url: str, finished: int, timeout_s: float = 90) -> None:
    """Wait until this many more sessions have finished (so a kill lands mid-run)."""
    base = await _finished(url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await _finished(url) < base + finished and loop.time() < deadline:
        await asyncio.sleep(0.1)


async def _finished(url: str) -> int:
    rows = await query(url, "select count(*) as n from sessions where request_id like 'crash-%' "
                            "and status in ('ok', 'degraded', 'failed')")
    return rows[0]["n"]
