"""Peak RSS of one worker process under a backlog of large requests (issue: 120 requests of about
990 KB reached 501 MiB when memory was bounded by the number of walks only).

The backlog is produced before the worker starts; the worker's RSS (VmRSS of its process) is
sampled every 100 ms until every result has arrived. The worker runs with its defaults (64 walks,
LLM4RERANK_INFLIGHT_BYTES=32 MiB) unless --inflight-bytes is given; sim-llm answers after
--latency-ms so walks overlap as they would against a real server.

Needs Kafka and PostgreSQL running (`make up`).
Usage: .venv/bin/python benchmarks/memory_bench.py [--requests 120] [--kb 990]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def large_requests(n: int, kb: int, tag: str) -> list[bytes]:
    out = []
    for body in sample_requests(n, seed=4, prefix=f"m{tag}"):
        small = len(orjson.dumps(body))
        body["candidates"][0]["features"]["title"] = "T" * max(kb * 1000 - small, 0)
        out.append(orjson.dumps(body))
    return out


async def run(n: int, kb: int, latency_ms: float, inflight: int | None, workdir: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    db = f"llm4rerank_mem_{tag}"
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
            "64",
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
        "LLM4RERANK_REQUEST_TOPIC": f"mem.{tag}.requests",
        "LLM4RERANK_RESULT_TOPIC": f"mem.{tag}.results",
        "LLM4RERANK_DLQ_TOPIC": f"mem.{tag}.dlq",
        "LLM4RERANK_CONSUMER_GROUP": f"mem-{tag}",
        "LLM4RERANK_METRICS_PORT": str(free_port()),
        "LLM4RERANK_STATE_DIR": str(workdir / tag),
    }
    if inflight is not None:
        env["LLM4RERANK_INFLIGHT_BYTES"] = str(inflight)
    worker = None
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/v1/models", proc=sim)
        requests = large_requests(n, kb, tag)
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092", linger_ms=5, max_request_size=2 * MIB)
        await producer.start()
        for r in requests:
            await (await producer.send(env["LLM4RERANK_REQUEST_TOPIC"], r))
        await producer.stop()
        consumer = AIOKafkaConsumer(
            env["LLM4RERANK_RESULT_TOPIC"],
            bootstrap_servers="127.0.0.1:9092",
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        log = open(workdir / f"worker-{tag}.log", "wb")
        worker = subprocess.Popen([CLI, "worker"], env=env, stdout=log, stderr=log)
        started = time.monotonic()
        seen: set[bytes] = set()
        peak = 0
        while len(seen) < n:
            peak = max(peak, rss_bytes(worker.pid))
            batch = await consumer.getmany(timeout_ms=100)
            for part in batch.values():
                seen.update(record.key for record in part)
            if time.monotonic() - started > 900:
                raise RuntimeError(f"only {len(seen)} of {n} results after 900 s")
        elapsed = time.monotonic() - started
        await consumer.stop()
        size = sum(map(len, requests)) / n
        budget = inflight or 32 * MIB
        print(
            f"{n} requests of {size / 1000:.0f} KB backlogged; in-flight budget "
            f"{budget / MIB:.0f} MiB; all {n} results in {elapsed:.1f} s; "
            f"worker peak RSS {peak / MIB:.0f} MiB"
        )
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        sim.terminate()
        sim.wait(10)
        conn = await asyncpg.connect(f"{PG}/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--kb", type=int, default=990, help="size of each request")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--inflight-bytes", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await run(args.requests, args.kb, args.latency_ms, args.inflight_bytes, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
