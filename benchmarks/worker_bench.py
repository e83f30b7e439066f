"""Throughput, CPU and added latency of worker processes through Kafka and PostgreSQL against sim-llm.

1. sim-llm with a fixed latency per call and a fixed number of calls served at once has a known
   capacity (calls/s); one worker's end-to-end rate (first request produced to last result
   received) is printed as a share of it. Target: at least 95%.
2. With zero latency (an instant, simulated LLM), 1, 2 and 3 worker processes in one consumer
   group: requests per second (results 10%..90%) and the workers' CPU milliseconds per node step.
   Targets for one worker: at least 140 requests/s and at most 1.5 ms per step.
3. At half of one worker's zero-latency capacity, paced: the latency the worker adds, i.e. receipt
   (the request's Kafka timestamp) to publish (the result's) minus the time its LLM calls took,
   p50 and p99. Target: tens of milliseconds (p99 under 100 ms).

`--profile FILE` records the one-worker zero-latency run (with `--latency-rate`, the paced run)
with py-spy (the bench extra) and prints its top frames (benchmarks/profile_top.py).

Needs Kafka and PostgreSQL running (`make up`). Usage: .venv/bin/python benchmarks/worker_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from worker.samples import sample_requests
from worker.store.calls_codec import inflate_calls

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "llm4rerank")
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
from profile_top import report  # noqa: E402
from service_kit import free_port, wait_http  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
TARGET_RPS = 140.0
TARGET_CPU_MS = 1.5
TARGET_ADDED_P99_MS = 100.0
IDLE_S = 5.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _group(cmd: bytes) -> str | None:
    if b"kafka.Kafka" in cmd:
        return "kafka"
    if cmd.startswith(b"postgres") or b"/bin/postgres" in cmd:  # backends, then the server
        return "postgresql"
    return None


def machine_cpu() -> dict[str, float]:
    """CPU seconds so far of what shares the machine with the workers: Kafka's broker, PostgreSQL
    (server and backends alive now) and this benchmark process; `busy` is all CPUs' non-idle time."""
    out = {"kafka": 0.0, "postgresql": 0.0, "bench": time.process_time()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        group = _group(_cmdline(entry.name))
        if group is None:
            continue
        with suppress(OSError, IndexError, ValueError):
            out[group] += cpu_seconds(int(entry.name))
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields]
    out["busy"] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return out


LAG = "llm4rerank_event_loop_lag_seconds_"
COUNTED = (
    "python_gc_objects_collected_total",
    "llm4rerank_step_commit_size_count",
    "llm4rerank_step_commit_size_sum",
    "llm4rerank_event_loop_lag_seconds_count",
    "llm4rerank_event_loop_lag_seconds_sum",
    "llm4rerank_event_loop_lag_seconds_bucket:0.01",
)


def worker_counters(port: int) -> dict[str, float]:
    """Totals so far in a worker, from its metrics: objects the cycle collector freed
    (prometheus-client's default process collector), and group commits of steps with the steps
    they carried (the journal's histogram), and how late the event loop ran its timers (a
    histogram bucket is named `name:le`)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    totals = dict.fromkeys(COUNTED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (f":{sample.labels['le']}" if "le" in sample.labels else "")
            if key in totals:
                totals[key] += sample.value
    return totals


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_case(
    n: int,
    latency_ms: float,
    max_concurrent: int,
    concurrency: int,
    workdir: Path,
    *,
    workers: int = 1,
    rate: float | None = None,
    profile: Path | None = None,
    warmup: int = 0,
) -> dict[str, Any]:
    """Run `workers` processes over `n` requests (all at once, or `rate` per second). With
    `warmup`, the CPU and the latencies count only after that many results, and only for the
    requests after the first `warmup` (a fresh worker's first requests pay for its connections
    and caches, and PostgreSQL's backends for theirs)."""
    tag = uuid.uuid4().hex[:8]
    db = f"llm4rerank_bench_{tag}"
    conn = await asyncpg.connect(f"{PG}/postgres")
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
    subprocess.run([CLI, "db", "upgrade", "--url", url], check=True, capture_output=True)
    sim_port = free_port()
    sim = subprocess.Popen(
        [CLI, "sim-llm", "--port", str(sim_port), "--latency-ms", str(latency_ms),
         "--max-concurrent", str(max_concurrent), "--seed", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {
        **os.environ,
        "LLM4RERANK_DATABASE_URL": url,
        "LLM4RERANK_LLM_BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
        "LLM4RERANK_LLM_MODEL": "sim-llm-simulated",
        "LLM4RERANK_REQUEST_TOPIC": f"bench.{tag}.requests",
        "LLM4RERANK_RESULT_TOPIC": f"bench.{tag}.results",
        "LLM4RERANK_DLQ_TOPIC": f"bench.{tag}.dlq",
        "LLM4RERANK_CONSUMER_GROUP": f"bench-{tag}",
        "LLM4RERANK_CONCURRENCY": str(concurrency),
        "LLM4RERANK_STATE_DIR": str(workdir / tag),
    }
    procs: list[subprocess.Popen[bytes]] = []
    spy: subprocess.Popen[bytes] | None = None
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/v1/models", proc=sim)
        logs = [workdir / f"worker-{tag}-{i}.log" for i in range(workers)]
        ports = [free_port() for _ in logs]
        for path, port in zip(logs, ports, strict=True):
            log = open(path, "wb")
            procs.append(
                subprocess.Popen(
                    [CLI, "worker"],
                    env={**env, "LLM4RERANK_METRICS_PORT": str(port)},
                    stdout=log,
                    stderr=log,
                )
            )
        consumer = AIOKafkaConsumer(
            env["LLM4RERANK_RESULT_TOPIC"],
            bootstrap_servers="127.0.0.1:9092",
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        for path in logs:
            await _wait_ready(path)
        if workers > 1:
            await asyncio.sleep(5)  # the group's rebalance settles before the clock starts
        requests = [orjson.dumps(r) for r in sample_requests(n, seed=3, prefix=f"b{tag}")]

        def snapshot() -> dict[str, Any]:
            return {
                "at": time.monotonic(),
                "workers": sum(cpu_seconds(p.pid) for p in procs),
                "shared": machine_cpu() | {"sim-llm": cpu_seconds(sim.pid)},
                "counted": [worker_counters(port) for port in ports],
            }

        idle = snapshot()
        await asyncio.sleep(IDLE_S)  # no requests yet: what a waiting worker costs
        idle_cores = (snapshot()["workers"] - idle["workers"]) / IDLE_S / workers
        base = snapshot() if not warmup else None
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092", linger_ms=0 if rate else 5)
        await producer.start()
        started = time.monotonic()
        sent_at: dict[bytes, int] = {}

        async def produce() -> None:
            acks = []
            for i, r in enumerate(requests):
                if rate:
                    await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                key = orjson.loads(r)["request_id"].encode()
                acks.append((key, await producer.send(env["LLM4RERANK_REQUEST_TOPIC"], r, key=key)))
            for key, ack in acks:
                sent_at[key] = (await ack).timestamp

        producing = asyncio.create_task(produce())
        published: dict[bytes, int] = {}
        arrivals: list[float] = []
        while len(published) < n:
            if base is None and len(published) >= warmup:
                base = snapshot()
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                for record in part:
                    if record.key not in published:
                        published[record.key] = record.timestamp
                        arrivals.append(time.monotonic() - started)
            if profile is not None and spy is None and len(published) >= n // 10:
                spy = subprocess.Popen(
                    [str(REPO / ".venv" / "bin" / "py-spy"), "record", "--pid", str(procs[0].pid),
                     "--rate", "200", "--duration", "5", "--format", "raw", "--nonblocking",
                     "-o", str(profile)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            if time.monotonic() - started > 600:
                raise RuntimeError(f"only {len(published)} of {n} results after 600 s")
        elapsed = time.monotonic() - started
        end = snapshot()
        assert base is not None
        cpu = end["workers"] - base["workers"]
        split = {k: end["shared"][k] - base["shared"][k] for k in base["shared"]}
        pairs = list(zip(base["counted"], end["counted"], strict=True))
        counted = {k: sum(b[k] - a[k] for a, b in pairs) for k in COUNTED}
        await producing
        await producer.stop()
        await consumer.stop()
        if spy is not None:
            spy.wait(60)
        conn = await asyncpg.connect(f"{PG}/{db}")
        calls = await conn.fetchval("select sum(llm_calls) from sessions")
        steps = await conn.fetchval("select count(*) from steps")
        llm_ms: dict[bytes, float] = {}
        for row in await conn.fetch(
            "select s.request_id, st.calls from sessions s join steps st on st.session_id = s.id"
        ):
            step_calls = inflate_calls(orjson.loads(row["calls"] or "[]"))  # the compact store deflates them
            waited = sum(float(c.get("latency_ms") or 0) for c in step_calls)
            key = row["request_id"].encode()
            llm_ms[key] = llm_ms.get(key, 0.0) + waited
        for r in requests[:warmup]:
            published.pop(orjson.loads(r)["request_id"].encode(), None)
        phases = await _phases(conn, published, llm_ms) if rate else {}
        await conn.close()
        added = [published[k] - sent_at[k] - llm_ms.get(k, 0.0) for k in published if k in sent_at]
        lo, hi = arrivals[n // 10], arrivals[(9 * n) // 10]
        steady_n = ((9 * n) // 10 - n // 10) / (hi - lo) if hi > lo else 0.0
        return {
            "elapsed": elapsed,
            "calls": calls,
            "steps": steps,
            "cpu": cpu,
            "gc_collected": counted["python_gc_objects_collected_total"],
            "step_commits": counted["llm4rerank_step_commit_size_count"],
            "steps_committed": counted["llm4rerank_step_commit_size_sum"],
            "lag": {k.removeprefix(LAG): v for k, v in counted.items() if k.startswith(LAG)},
            "split": split,
            "measured_s": end["at"] - base["at"],
            "idle_cores": idle_cores,
            "n": n,
            "measured_n": n - warmup,
            "steady_calls_per_s": steady_n * (calls / n),
            "steady_requests_per_s": steady_n,
            "added_ms": added,
            "phases": phases,
        }
    finally:
        if spy is not None and spy.poll() is None:
            spy.terminate()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
        sim.terminate()
        sim.wait(10)
        conn = await asyncpg.connect(f"{PG}/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


def _ms(a: Any, b: Any) -> float:
    return (b - a).total_seconds() * 1000


async def _phases(
    conn: asyncpg.Connection, published: dict[bytes, int], llm_ms: dict[bytes, float]
) -> dict[str, list[float]]:
    """Where the added latency goes, per request, from the times its session row and steps keep:
    Kafka receipt -> inbox transaction start (received_at) -> claim (claimed_at) -> walk with its
    step commits, less LLM time (to the result's completed_at) -> result's Kafka timestamp."""
    out: dict[str, list[float]] = {
        k: [] for k in ("fetch+batch", "inbox->claim", "walk-llm", "complete->publish")
    }
    for row in await conn.fetch(
        "select request_id, receipt_at, received_at, claimed_at, result from sessions"
    ):
        key = row["request_id"].encode()
        if key not in published or row["claimed_at"] is None:
            continue
        completed = datetime.fromisoformat(orjson.loads(row["result"])["completed_at"])
        out["fetch+batch"].append(_ms(row["receipt_at"], row["received_at"]))
        out["inbox->claim"].append(_ms(row["received_at"], row["claimed_at"]))
        out["walk-llm"].append(_ms(row["claimed_at"], completed) - llm_ms.get(key, 0.0))
        out["complete->publish"].append(published[key] - completed.timestamp() * 1000)
    return out


async def _wait_ready(log: Path) -> None:
    for _ in range(600):
        if b"Worker]: Ready" in log.read_bytes():
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("worker not ready")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600, help="the loaded case (LLM latency)")
    parser.add_argument("--fast-requests", type=int, default=1500, help="each zero-latency case")
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--max-concurrent", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", default="1,2,3", help="worker processes per zero-latency case")
    parser.add_argument("--profile", type=Path, help="py-spy the one-worker zero-latency run into FILE")
    parser.add_argument("--skip-loaded", action="store_true", help="skip the LLM-latency case")
    parser.add_argument(
        "--latency-rate", type=float, help="only the added-latency case, paced at this many requests/s"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.latency_rate:
            await added_latency(args.latency_rate, args.concurrency, Path(tmp), profile=args.profile)
            if args.profile is not None and args.profile.exists():
                print(report(args.profile))
            return
        if not args.skip_loaded:
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
        one: dict[str, Any] | None = None
        for workers in [int(w) for w in args.workers.split(",")]:
            fast = await run_case(
                args.fast_requests, 0.0, 64, args.concurrency, Path(tmp), workers=workers,
                profile=args.profile if workers == 1 else None,
            )  # fmt: skip
            one = one or fast
            per_step = 1000 * fast["cpu"] / fast["steps"]
            rps = fast["steady_requests_per_s"]
            print(
                f"zero latency, {workers} worker(s): {rps:.1f} requests/s "
                f"(target >= {TARGET_RPS:.0f}{' per worker alone' if workers > 1 else ''}), "
                f"{per_step:.2f} worker CPU ms per node step (target <= {TARGET_CPU_MS}) "
                f"({fast['steps']} steps, {fast['cpu']:.2f} CPU s in all workers; the cycle "
                f"collector freed {fast['gc_collected'] / fast['steps']:.0f} objects per step; "
                f"{fast['steps_committed'] / max(1.0, fast['step_commits']):.1f} steps per group commit)"
            )
            print(cpu_split(fast, workers))
        if args.profile is not None and args.profile.exists():
            print(report(args.profile))
        if one is not None:
            await added_latency(one["steady_requests_per_s"] / 2, args.concurrency, Path(tmp), "half of")


def cpu_split(case: dict[str, Any], workers: int) -> str:
    """Where the machine's CPU went during a run, and what one worker would do with a core of its
    own: the worker's requests/s per CPU second, at its measured CPU per request."""
    split, elapsed = case["split"], case["measured_s"]
    cores = os.cpu_count() or 1
    parts = [("workers", case["cpu"])] + [(k, split[k]) for k in ("sim-llm", "kafka", "postgresql", "bench")]
    parts.append(("the rest (kernel, other processes)", split["busy"] - sum(seconds for _, seconds in parts)))
    shown = ", ".join(f"{name} {seconds / elapsed:.2f}" for name, seconds in parts)
    idle = f"each worker idle (the {IDLE_S:.0f} s before the run) {case['idle_cores']:.3f} cores"
    per_request = case["cpu"] / case["measured_n"]
    return (
        f"  CPU in cores over the run: {shown}; {idle}; "
        f"machine busy {split['busy'] / elapsed:.2f} of {cores} "
        f"(what stops before the run's end is not counted). {workers} worker(s) at "
        f"{1000 * per_request:.1f} CPU ms per request: {1 / per_request:.0f} requests/s per core of "
        "their own"
    )


async def added_latency(
    rate: float, concurrency: int, workdir: Path, what: str = "set by", profile: Path | None = None
) -> None:
    warmup = max(50, int(rate * 5))
    paced = await run_case(
        warmup + max(200, int(rate * 10)), 0.0, 64, concurrency, workdir, rate=rate, profile=profile,
        warmup=warmup,
    )  # fmt: skip
    added = paced["added_ms"]
    p50, p99 = statistics.median(added), percentile(added, 0.99)
    print(
        f"worker-added latency at {rate:.0f} requests/s ({what} one worker's capacity), "
        f"receipt to publish minus LLM time, {len(added)} requests after {warmup} to warm up: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (target: tens of ms, p99 <= {TARGET_ADDED_P99_MS:.0f})"
    )
    for phase, values in paced["phases"].items():
        if values:
            print(
                f"  {phase:>18}: p50 {statistics.median(values):6.1f} ms, "
                f"p99 {percentile(values, 0.99):6.1f} ms"
            )
    print(loop_lag(paced["lag"]))
    print(cpu_split(paced, 1))


def loop_lag(lag: dict[str, float]) -> str:
    """The worker's own event-loop lag over the run: what every request waited on top of its work
    because the process was busy or short of CPU."""
    timers = max(1.0, lag["count"])
    return (
        f"  event loop: its 100 ms timers fired {1000 * lag['sum'] / timers:.1f} ms late on average, "
        f"{1 - lag['bucket:0.01'] / timers:.1%} of them more than 10 ms late"
    )


if __name__ == "__main__":
    asyncio.run(main())
