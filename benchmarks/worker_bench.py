"""Throughput of one worker process through Kafka and PostgreSQL against sim-llm.

1. sim-llm with a fixed latency per call and a fixed number of calls served at once has a known
   capacity (calls/s); the worker's end-to-end rate (first request produced to last result
   received) is printed as a share of it. Target: at least 95%.
2. With zero latency: requests per second, and the worker's CPU milliseconds per node step.

Needs Kafka and PostgreSQL running (`make up`). Usage: .venv/bin/python benchmarks/worker_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.samples import sample_requests

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "llm4rerank")
sys.path.insert(0, str(REPO / "tests"))
from service_kit import free_port, wait_http  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_case(
    n: int, latency_ms: float, max_concurrent: int, concurrency: int, workdir: Path
) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    db = f"llm4rerank_bench_{tag}"
    conn = await asyncpg.connect(f"{PG}/postgres")
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
    subprocess.run([CLI, "db", "upgrade", "--url", url], check=True, capture_output=True)
    sim_port = free_port()
    sim = subprocess.Popen(
        [
            CLI,
            "sim-llm",
            "--port",
            str(sim_port),
            "--latency-ms",
            str(latency_ms),
            "--max-concurrent",
            str(max_concurrent),
            "--seed",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "LLM4RERANK_DATABASE_URL": url,
        "LLM4RERANK_LLM_BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
        "LLM4RERANK_LLM_MODEL": "sim-llm-simulated",
        "LLM4RERANK_REQUEST_TOPIC": f"bench.{tag}.requests",
        "LLM4RERANK_RESULT_TOPIC": f"bench.{tag}.results",
        "LLM4RERANK_DLQ_TOPIC": f"bench.{tag}.dlq",
        "LLM4RERANK_CONSUMER_GROUP": f"bench-{tag}",
        "LLM4RERANK_METRICS_PORT": str(free_port()),
        "LLM4RERANK_CONCURRENCY": str(concurrency),
        "LLM4RERANK_STATE_DIR": str(workdir / tag),
    }
    worker = None
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/v1/models", proc=sim)
        log = open(workdir / f"worker-{tag}.log", "wb")
        worker = subprocess.Popen([CLI, "worker"], env=env, stdout=log, stderr=log)
        consumer = AIOKafkaConsumer(
            env["LLM4RERANK_RESULT_TOPIC"],
            bootstrap_servers="127.0.0.1:9092",
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        await _wait_ready(workdir / f"worker-{tag}.log")
        requests = [orjson.dumps(r) for r in sample_requests(n, seed=3, prefix=f"b{tag}")]
        cpu0 = cpu_seconds(worker.pid)
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092", linger_ms=5)
        await producer.start()
        started = time.monotonic()
        await asyncio.gather(*[await producer.send(env["LLM4RERANK_REQUEST_TOPIC"], r) for r in requests])
        await producer.stop()
        seen: set[bytes] = set()
        arrivals: list[float] = []
        while len(seen) < n:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                for record in part:
                    if record.key not in seen:
                        seen.add(record.key)
                        arrivals.append(time.monotonic() - started)
            if time.monotonic() - started > 600:
                raise RuntimeError(f"only {len(seen)} of {n} results after 600 s")
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(worker.pid) - cpu0
        await consumer.stop()
        conn = await asyncpg.connect(f"{PG}/{db}")
        calls = await conn.fetchval("select sum(llm_calls) from sessions")
        steps = await conn.fetchval("select count(*) from steps")
        await conn.close()
        lo, hi = arrivals[n // 10], arrivals[(9 * n) // 10]
        steady = (((9 * n) // 10 - n // 10) / (hi - lo)) * (calls / n) if hi > lo else 0.0
        return {
            "elapsed": elapsed,
            "calls": calls,
            "steps": steps,
            "cpu": cpu,
            "n": n,
            "steady_calls_per_s": steady,
        }
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        sim.terminate()
        sim.wait(10)
        conn = await asyncpg.connect(f"{PG}/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


async def _wait_ready(log: Path) -> None:
    for _ in range(600):
        if b"Worker]: Ready" in log.read_bytes():
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("worker not ready")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--max-concurrent", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = await run_case(
            args.requests, args.latency_ms, args.max_concurrent, args.concurrency, Path(tmp)
        )
        capacity = args.max_concurrent / (args.latency_ms / 1000)
        rate = loaded["calls"] / loaded["elapsed"]
        steady = loaded["steady_calls_per_s"] / capacity
        print(
            f"sim-llm capacity: {args.max_concurrent} calls at once x {args.latency_ms:.0f} ms "
            f"= {capacity:.1f} calls/s"
        )
        print(
            f"worker end to end: {loaded['n']} requests, {loaded['calls']} LLM calls in "
            f"{loaded['elapsed']:.2f} s = {rate:.1f} calls/s "
            f"({loaded['n'] / loaded['elapsed']:.1f} requests/s); whole run incl. ramp-up and "
            f"drain: {rate / capacity:.1%} of capacity"
        )
        print(
            f"share of LLM capacity with a backlog (results 10%..90%): {steady:.1%} "
            f"(target >= 95%): {'PASS' if steady >= 0.95 else 'FAIL'}"
        )
        fast = await run_case(max(args.requests // 2, 200), 0.0, 64, args.concurrency, Path(tmp))
        print(
            f"zero latency: {fast['n'] / fast['elapsed']:.1f} requests/s, "
            f"{1000 * fast['cpu'] / fast['steps']:.2f} worker CPU ms per node step "
            f"({fast['steps']} steps, {fast['cpu']:.2f} CPU s)"
        )


if __name__ == "__main__":
    asyncio.run(main())
