"""The hostile suite: one worker on the real broker, PostgreSQL and sim-llm gets every kind of
poison message and LLM answer (hand-picked from issue reports, plus hypothesis-generated strings
in every request field and answer), interleaved with good messages. Every message gets exactly
one outcome (its result or one dead letter with the expected code), nothing stalls, the
backpressure gauge stays 0 for data errors, and every stored step reads back through
`trace show --json` and the audit API."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
import urllib.request
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hostile_cases import (
    SPECIAL_REQUEST_IDS,
    Message,
    generated_answers,
    generated_requests,
    phase_one,
    phase_two,
)
from service_kit import CLI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from stream_helpers import collect, full_calls, query

from worker.audit.api import create_app
from worker.audit.db import read_only_engine
from worker.engine.steps import LLMCall

pytestmark = pytest.mark.integration
TOKEN = "hostile-suite-token-0123456789"
PRODUCER_LIMIT = 1_000_000


async def produce(bootstrap: str, topic: str, messages: list[Message]) -> list[tuple[int, int]]:
    """Send in order; returns (partition, offset) of each message."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2_000_000
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, m.value, key=m.key, headers=m.headers or None) for m in messages
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(meta.partition, meta.offset) for meta in metas]


def set_faults(port: int, **update: Any) -> None:
    """sim-llm's fault knobs; JSON with escapes, so lone surrogates travel too."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/sim/faults",
        method="POST",
        data=json.dumps(update, ensure_ascii=True).encode(),
    )
    urllib.request.urlopen(request, timeout=5).read()


def backpressure(port: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:  # the worker is still starting
        return None
    for line in body.splitlines():
        if line.startswith('llm4rerank_backpressure{dependency="postgres"}'):
            return float(line.rsplit(" ", 1)[1])
    return None


async def outcomes(
    env: dict[str, str],
    messages: list[Message],
    sent: list[tuple[int, int]],
    results_before: int,
    dead_before: int,
) -> tuple[list, list, list[float]]:
    """Read results and dead letters until every message has its outcome, sampling the gauge."""
    bootstrap = env["LLM4RERANK_KAFKA_BOOTSTRAP"]
    want_results = results_before + sum(m.expect == "result" for m in messages)
    want_dead = dead_before + sum(m.expect != "result" for m in messages)
    gauge: list[float] = []
    deadline = time.monotonic() + 150
    while True:
        value = backpressure(env["LLM4RERANK_METRICS_PORT"])
        if value is not None:
            gauge.append(value)
        results = await collect(bootstrap, env["LLM4RERANK_RESULT_TOPIC"], 0, 0)
        dead = await collect(bootstrap, env["LLM4RERANK_DLQ_TOPIC"], 0, 0)
        if (len(results) >= want_results and len(dead) >= want_dead) or time.monotonic() > deadline:
            final = backpressure(env["LLM4RERANK_METRICS_PORT"])  # once more, after the work
            return results, dead, gauge + ([final] if final is not None else [])
        await asyncio.sleep(1.0)


def check_outcomes(messages: list[Message], sent: list[tuple[int, int]], results: list, dead: list) -> None:
    dead_at = {}
    for _, record in dead:
        where = (record["source"]["partition"], record["source"]["offset"])
        assert where not in dead_at, f"two dead letters for one message at {where}"
        dead_at[where] = record
    result_count: dict[str, int] = {}
    for key, _ in results:
        result_count[key] = result_count.get(key, 0) + 1
    wanted: dict[str, int] = {}
    for message, where in zip(messages, sent, strict=True):
        if message.expect == "result":
            assert where not in dead_at, (message.kind, dead_at.get(where, {}).get("error"))
            wanted[message.request_id] = wanted.get(message.request_id, 0) + 1  # type: ignore[index]
        else:
            assert where in dead_at, f"{message.kind}: no dead letter"
            record = dead_at[where]
            assert record["error"]["code"] == message.expect, (message.kind, record["error"])
    for rid, n in wanted.items():
        assert result_count.get(rid, 0) == n, f"{rid!r}: {result_count.get(rid, 0)} results, {n} wanted"
    assert set(result_count) == set(wanted), set(result_count) ^ set(wanted)


async def test_hostile_messages_and_answers(sim_llm, stream_env, start_worker, tmp_path):
    sim = sim_llm("--seed", "11")
    env = {**stream_env, "LLM4RERANK_LLM_BASE_URL": sim.base_url}
    start_worker(env)
    bootstrap, topic = env["LLM4RERANK_KAFKA_BOOTSTRAP"], env["LLM4RERANK_REQUEST_TOPIC"]
    url = env["LLM4RERANK_DATABASE_URL"]

    # phase one: poison requests among good ones, and 40 generated ones
    first = phase_one() + generated_requests(40)
    sent_first = await produce(bootstrap, topic, first)
    results, dead, gauge = await outcomes(env, first, sent_first, 0, 0)
    check_outcomes(first, sent_first, results, dead)

    # phase two: answers with U+0000, lone surrogates, escapes, very long and generated text
    answers = ["\x00", "\ud800", "\x00" * 3, "\x1b[2J\x1b[31m", "x" * 100_000, *generated_answers(20)]
    set_faults(sim.port, inject_rate=0.3, inject_texts=answers, inject_at="random")
    second = phase_two(30)
    sent_second = await produce(bootstrap, topic, second)
    results2, dead2, gauge2 = await outcomes(env, second, sent_second, len(results), len(dead))
    check_outcomes(first + second, sent_first + sent_second, results2, dead2)

    # nothing stalled, and a data error never read as "database down"
    assert gauge and gauge2 and max(gauge + gauge2) == 0.0
    stuck = await query(url, "select request_id, status from sessions where status in ('pending', 'running')")
    assert stuck == []

    # dead letters fit under the producer's limit; big payloads are cut with their digest
    dead_at = {(r["source"]["partition"], r["source"]["offset"]): r for _, r in dead2}
    for _, record in dead2:
        assert len(orjson.dumps(record)) < PRODUCER_LIMIT
    for message, where in zip(first, sent_first, strict=True):
        if len(message.value) > 300_000 and message.expect != "result":
            record = dead_at[where]
            assert record["payload_truncated"] is True
            assert record["payload_sha256"] == hashlib.sha256(message.value).hexdigest()
            assert record["payload_bytes"] == len(message.value)
    conflict = next(r for _, r in dead2 if r["error"]["code"] == "conflict")
    assert conflict["request_id"] == "conf-a" and "first received at" in conflict["error"]["message"]

    by_id: dict[str, list[dict[str, Any]]] = {}
    for key, value in results2:
        by_id.setdefault(key, []).append(value)
    # the first request's answer is never given for the second: conf-a ranks its own items
    first_conf = next(m for m in first if m.kind == "conflict-first")
    own = {c["item_id"] for c in orjson.loads(first_conf.value)["candidates"]}
    assert all(set(r["ranking"]) == own for r in by_id["conf-a"])
    assert by_id["conf-a"][0]["completed_at"] == by_id["conf-a"][1]["completed_at"]
    # a goal with fake Node:/Next: lines walks like the same goal without them
    assert by_id["fake-goal"][0]["path"] == by_id["plain-goal"][0]["path"]
    assert by_id["rp-unknown"][0]["replay_of"] is None
    assert by_id["rp-known"][0]["replay_of"] == "plain-goal"
    notes = await query(url, "select notes from sessions where request_id = 'rp-unknown'")
    assert "no-such-session" in notes[0]["notes"][0]
    odd = by_id["odd-ids"][0]
    assert odd["policy"] == "llm" and odd["status"] == "ok"

    # prompts: request text never starts a line, and a 900 KB title is cut (noted in the step)
    rows = await full_calls(
        url,
        await query(
            url, "select x.request_id, s.calls, s.notes from steps s join sessions x on x.id = s.session_id"
        ),
    )
    for row in rows:
        for call in row["calls"] or []:
            for message in call["messages"]:
                if message["role"] == "user" and "\nNode: " in "\n" + message["content"]:
                    lines = message["content"].split("\n")
                    assert sum(line.startswith("Node: ") for line in lines) == 1, row["request_id"]
                    assert sum(line.startswith("Next: ") for line in lines) == 1, row["request_id"]
                assert len(message["content"]) < 60_000, row["request_id"]
    huge = [r for r in rows if r["request_id"] == "huge-title"]
    assert huge and all(any("cut to" in n for n in r["notes"]) for r in huge if r["calls"])

    # answers with characters PostgreSQL cannot hold were stored losslessly and noted
    replaced = [
        (r, LLMCall.model_validate(c)) for r in rows for c in r["calls"] or [] if c.get("raw_replaced")
    ]
    assert replaced, "no answer with U+0000 or a lone surrogate was stored"
    for row, call in replaced:
        assert any("U+FFFD" in n for n in row["notes"])
        original = call.original_raw or ""
        assert any(ch == "\x00" or 0xD800 <= ord(ch) <= 0xDFFF for ch in original)

    await read_back(url, {r["request_id"] for r in rows}, replaced, tmp_path)


async def read_back(url: str, request_ids: set[str], replaced: list, tmp_path) -> None:
    """Every stored session and step reads back in the API; some also in `trace show`."""
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        counts = dict(
            (
                await conn.execute(
                    text(
                        "select x.request_id, count(s.id) from sessions x left join steps s on "
                        "s.session_id = x.id group by x.request_id"
                    )
                )
            ).all()
        )
    await engine.dispose()
    app = create_app(read_only_engine(url), [TOKEN])
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://a", headers=headers
    ) as client:
        for rid in sorted(counts):
            response = await client.get("/api/session", params={"request_id": rid})
            assert response.status_code == 200, (rid, response.text[:200])
            assert len(response.json()["steps"]) == counts[rid]
            if counts[rid]:
                calls = await client.get("/api/session", params={"request_id": rid, "step": 1})
                assert calls.status_code == 200
    shown = [*SPECIAL_REQUEST_IDS, *sorted({row["request_id"] for row, _ in replaced})[:2]]
    for rid in shown:
        as_json = subprocess.run(
            [CLI, "trace", "show", rid, "--json", "--db", url], capture_output=True, timeout=60
        )
        assert as_json.returncode == 0, as_json.stderr[-500:]
        assert len(orjson.loads(as_json.stdout)["steps"]) == counts[rid]
        as_text = subprocess.run(
            [CLI, "trace", "show", rid, "--calls", "--db", url], capture_output=True, timeout=60
        )
        assert as_text.returncode == 0
        assert not any(b in as_text.stdout for b in (b"\x1b", b"\x00", b"\r", b"\x85"))
