"""What every case of the fault matrix checks after its run, and the figures it reports:
no request lost, no stored LLM call sent again, latency counted from receipt, recorded replay at
100%, and (when the LLM is what fails) every result within its deadline plus the stated slack."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from service_kit import REPO
from stream_helpers import collect, full_calls, produce, query

from worker.audit.db import read_only_engine
from worker.audit.queries import TraceQueries
from worker.config import Settings
from worker.replay.replayer import RecordedReplayer

SLACK_MS = 1000  # the README's promise: deadline + about a second, even in a total LLM outage


def infra(script: str, *args: str) -> str:
    return subprocess.run(
        ["bash", str(REPO / "infra" / script), *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


def owns_services() -> bool:
    """Outages are only staged on services `make up` started (never on someone else's)."""
    return "ours" in infra("postgres/pg.sh", "status") and "ours" in infra("kafka/kafka.sh", "status")


@dataclass
class Figures:
    """One row of the fault matrix."""

    case: str
    requests: int
    lost: int = 0
    repeated_calls: int = 0
    checked_calls: int = 0
    max_over_deadline_ms: int | None = None
    failover_s: float | None = None
    replayed: int = 0
    reproduced: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        over = "-" if self.max_over_deadline_ms is None else f"{self.max_over_deadline_ms} ms"
        failover = "-" if self.failover_s is None else f"{self.failover_s:.1f} s"
        return (
            f"FAULT MATRIX | {self.case} | requests {self.requests} | lost {self.lost} | "
            f"repeated calls {self.repeated_calls} of {self.checked_calls} | max latency "
            f"over deadline {over} | failover {failover} | replay {self.reproduced}/"
            f"{self.replayed} | {self.statuses} | {self.reasons}"
        )


async def send(env: dict[str, str], requests: list[dict[str, Any]]) -> None:
    await produce(
        env["LLM4RERANK_KAFKA_BOOTSTRAP"],
        env["LLM4RERANK_REQUEST_TOPIC"],
        [orjson.dumps(r) for r in requests],
        [r["request_id"].encode() for r in requests],
    )


async def send_paced(env: dict[str, str], requests: list[dict[str, Any]], per_s: float) -> None:
    """Arrivals at a steady rate, as a live feed sends them (not a backlog)."""
    batch = max(1, int(per_s / 10))
    for i in range(0, len(requests), batch):
        await send(env, requests[i : i + batch])
        await asyncio.sleep(batch / per_s)


async def finished(url: str, prefix: str) -> int:
    while True:
        try:
            rows = await query(
                url,
                "select count(*) as n from sessions where request_id like "
                ":p and status in ('ok', 'degraded', 'failed')",
                p=f"{prefix}-%",
            )
            return rows[0]["n"]
        except OSError:  # the database is down in this case: wait
            await asyncio.sleep(0.5)


async def until_finished(url: str, prefix: str, n: int, timeout_s: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await finished(url, prefix) < n:
        assert loop.time() < deadline, f"fewer than {n} {prefix} sessions finished in {timeout_s}s"
        await asyncio.sleep(0.1)


async def check_run(
    case: str,
    env: dict[str, str],
    requests: list[dict[str, Any]],
    calls_log: Path,
    *,
    llm_fails: set[str] | None = None,
    timeout_s: float = 240,
) -> Figures:
    """The matrix's assertions for one finished case; returns its figures."""
    ids = {r["request_id"] for r in requests}
    prefix = next(iter(ids)).rsplit("-", 1)[0]
    figures = Figures(case, len(requests))
    results = await collect(env["LLM4RERANK_KAFKA_BOOTSTRAP"], env["LLM4RERANK_RESULT_TOPIC"], ids, timeout_s)
    rankings: dict[str, list[list[str]]] = defaultdict(list)
    for key, value in results:
        rankings[key].append(value["ranking"])
    figures.lost = len(ids - set(rankings))
    assert figures.lost == 0, f"{figures.lost} request(s) have no result"
    for key, seen in rankings.items():
        assert all(r == seen[0] for r in seen), f"{key} was published with different rankings"

    url = env["LLM4RERANK_DATABASE_URL"]
    rows = await query(
        url,
        "select request_id, status, result, latency_ms, receipt_at, "
        "received_at, claimed_at, completed_at, run_config from sessions "
        "where request_id like :p",
        p=f"{prefix}-%",
    )
    assert len(rows) == len(ids)
    for row in rows:
        figures.statuses[row["status"]] = figures.statuses.get(row["status"], 0) + 1
        if row["result"]["reason"]:
            kind = re.sub(r"\d+", "N", re.split(r"[:;]", row["result"]["reason"])[0])
            figures.reasons[kind] = figures.reasons.get(kind, 0) + 1
        assert row["status"] in ("ok", "degraded"), (row["request_id"], row["result"])
        assert rankings[row["request_id"]][0] == row["result"]["ranking"]
        assert row["run_config"], "the run configuration is stored with every session"
        # time runs from receipt, across resumes and workers
        since_receipt = (row["completed_at"] - row["receipt_at"]).total_seconds() * 1000
        assert abs(row["latency_ms"] - since_receipt) < 250, (
            row["request_id"],
            row["latency_ms"],
            since_receipt,
        )
    if llm_fails:  # the requests that arrived while the LLM failed
        deadline = int(env["LLM4RERANK_DEADLINE_MS"])
        over = max(r["latency_ms"] - deadline for r in rows if r["request_id"] in llm_fails)
        figures.max_over_deadline_ms = over
        late = sorted((r for r in rows if r["request_id"] in llm_fails), key=lambda r: -r["latency_ms"])[:3]
        assert over <= SLACK_MS, (
            f"a result came {over} ms after its deadline",
            [
                (r["request_id"], r["receipt_at"], r["received_at"], r["claimed_at"], r["completed_at"])
                for r in late
            ],
        )

    figures.checked_calls, figures.repeated_calls = await repeated_calls(url, prefix, calls_log)
    assert figures.checked_calls > 0
    assert figures.repeated_calls == 0, "a stored step's LLM call was sent again after it was stored"

    figures.replayed, figures.reproduced, differing = await replay(url, sorted(ids))
    assert figures.reproduced == figures.replayed == len(ids), differing[:3]
    print("\n" + figures.line())
    return figures


async def repeated_calls(url: str, prefix: str, calls_log: Path) -> tuple[int, int]:
    """(stored calls checked, stored calls whose prompt reached the LLM again after it was
    stored): resumes must serve stored calls from the store."""
    served: dict[str, list[float]] = defaultdict(list)
    for line in calls_log.read_bytes().splitlines():
        entry = orjson.loads(line)
        served[entry["prompt"]].append(entry["t"])
    steps = await full_calls(
        url,
        await query(
            url,
            "select s.calls, s.created_at from steps s join sessions x on "
            "x.id = s.session_id where x.request_id like :p",
            p=f"{prefix}-%",
        ),
    )
    checked = repeated = 0
    for step in steps:
        stored_at = step["created_at"].timestamp() if isinstance(step["created_at"], datetime) else 0
        for call in step["calls"] or []:
            if not call.get("attempts") and call.get("raw") is None:
                continue  # never sent (no HTTP attempt)
            digest = hashlib.sha256(orjson.dumps(call["messages"])).hexdigest()
            assert served[digest], "a stored call never reached the LLM"
            repeated += any(t > stored_at + 0.001 for t in served[digest])
            checked += 1
    return checked, repeated


async def replay(url: str, request_ids: list[str]) -> tuple[int, int, list[Any]]:
    """Recorded replay of these sessions: (replayed, reproduced, the differing comparisons)."""
    engine = read_only_engine(url)
    try:
        stored = await TraceQueries(engine).load(request_ids)
    finally:
        await engine.dispose()
    replayer = RecordedReplayer(Settings(_env_file=None))
    comparisons = [await replayer.replay(s) for s in stored]
    differing = [
        (c.original.request_id, c.error, c.diffs[:2], c.original.status, c.replay and c.replay.status)
        for c in comparisons
        if not c.reproduced
    ]
    return len(comparisons), len(comparisons) - len(differing), differing
