"""Steps keep their calls lean (system message and response_format stored once, by SHA-256, and
defaults left out) and every reader gives back each prompt byte for byte, for steps stored in this
form and for steps stored before it, in full."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cases import cases
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, insert, select

from worker.audit.queries import TraceQueries
from worker.engine.steps import HTTPAttempt, LLMCall, StepRecord
from worker.samples import sample_requests
from worker.schemas import RerankRequest
from worker.store.calls_codec import inflate_calls
from worker.store.parts import join_calls, part_hash, refs_of, split_calls
from worker.store.store import Store
from worker.store.tables import prompt_parts, sessions, steps

CLI = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "llm4rerank")
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80)
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": text})
calls = st.lists(
    st.builds(
        LLMCall,
        messages=st.lists(message, max_size=4),
        response_format=st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"type": st.just("json_schema"), "json_schema": st.dictionaries(text, text, max_size=3)}
            ),
        ),
        raw=st.one_of(st.none(), text),
        error=st.one_of(st.none(), text),
        retries=st.integers(0, 5),
        prompt_tokens=st.integers(0, 10_000),
        latency_ms=st.floats(0, 1e6, allow_nan=False),
        deadline_passed=st.booleans(),
        attempts=st.lists(
            st.builds(
                HTTPAttempt,
                status=st.one_of(st.none(), st.integers(100, 599)),
                error=st.one_of(st.none(), text),
            ),
            max_size=3,
        ),
        window=st.one_of(st.none(), st.tuples(st.integers(1, 9), st.integers(1, 9)).map(list)),
    ),
    max_size=4,
)


@cases(200)
@given(calls)
def test_split_then_join_gives_the_recorded_calls_back(recorded: list[LLMCall]) -> None:
    dumped = [c.model_dump(mode="json") for c in recorded]
    parts: dict[str, Any] = {}
    lean = split_calls(dumped, parts)
    stored = orjson.loads(orjson.dumps(lean))  # as a JSON column gives it back
    assert refs_of(stored) == set(parts)
    assert all(part_hash(body) == key for key, body in parts.items())
    assert not any(m.get("role") == "system" for c in stored for m in c["messages"] if isinstance(m, dict))
    assert join_calls(stored, parts) == dumped
    assert join_calls(dumped, {}) == dumped  # the full (older) form reads as it is


def test_a_missing_part_is_an_error_not_a_silent_gap() -> None:
    parts: dict[str, Any] = {}
    lean = split_calls(
        [LLMCall(messages=[{"role": "system", "content": "s"}]).model_dump(mode="json")], parts
    )
    with pytest.raises(LookupError):
        join_calls(lean, {})


def _digests(log: Path) -> list[str]:
    return [orjson.loads(line)["prompt"] for line in log.read_bytes().splitlines() if line.strip()]


def _digest(messages: list[dict[str, Any]]) -> str:
    """What sim-llm logs for a call: the SHA-256 of the messages' JSON as the client sent it."""
    return hashlib.sha256(orjson.dumps(messages).decode().encode()).hexdigest()


@pytest.mark.integration
def test_stored_prompts_match_what_the_llm_received(fresh_database, sim_llm, tmp_path) -> None:
    """Offline rerank into PostgreSQL against sim-llm with a call log: every prompt read back
    through the audit queries and the store's resume path hashes to what sim-llm received; the
    steps' rows hold no system message; a step stored in full (before the change) reads back
    unchanged next to them."""
    log = tmp_path / "calls.jsonl"
    sim = sim_llm("--seed", "4", "--call-log", str(log))
    requests = sample_requests(6, seed=11, prefix="lean")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in requests))
    with fresh_database("llm4rerank_test_lean") as (_, url):
        env = {
            "PATH": "/usr/bin:/bin",
            "LLM4RERANK_LLM_BASE_URL": sim.base_url,
            "LLM4RERANK_LLM_MODEL": "sim-llm-simulated",
        }
        done = subprocess.run(
            [CLI, "rerank", str(source), "--store", url, "--out", str(tmp_path / "out.jsonl")],
            env=env,
            capture_output=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        asyncio.run(_check_read_back(url, requests, _digests(log)))


async def _check_read_back(url: str, requests: list[dict[str, Any]], received: list[str]) -> None:
    store = Store(url)
    try:
        queries = TraceQueries(store.engine)
        read_back: list[str] = []
        for stored in await queries.load([r["request_id"] for r in requests]):
            detail = await queries.session(stored.request_id, with_calls=True)
            assert detail is not None
            for step, shown in zip(stored.steps, detail["steps"], strict=True):
                assert shown["calls"] == [c.model_dump(mode="json") for c in step.calls]
                one = await queries.step_calls(stored.request_id, step.step)
                assert one == shown["calls"]
                read_back += [_digest(c.messages) for c in step.calls]
        assert len(read_back) >= 2 * len(requests)
        assert sorted(read_back) == sorted(received[-len(read_back) :])
        assert set(read_back) <= set(received)

        async with store.engine.connect() as conn:
            raw = [inflate_calls(c) for c in (await conn.execute(select(steps.c.calls))).scalars()]
            n_parts = (await conn.execute(select(func.count()).select_from(prompt_parts))).scalar()
        assert not any(
            isinstance(m, dict) and m.get("role") == "system"
            for row in raw
            for c in row
            for m in c["messages"]
        )
        assert n_parts is not None and n_parts < sum(len(row) for row in raw)

        # a step stored before the change: its calls in full, as model_dump wrote them
        old = StepRecord(
            step=1,
            node="accuracy",
            policy="llm",
            ranking=["x", "y"],
            calls=[
                LLMCall(
                    messages=[
                        {"role": "system", "content": "old system \u00e9"},
                        {"role": "user", "content": "old user"},
                    ],
                    response_format={"type": "json_object"},
                    raw='{"ranking":[2,1]}',
                )
            ],
        )
        request = RerankRequest.model_validate(sample_requests(1, seed=3, prefix="old")[0])
        await store.receive_checked([(request, None)])
        async with store.engine.begin() as conn:
            sid, received_at = (
                await conn.execute(
                    select(sessions.c.id, sessions.c.received_at).where(
                        sessions.c.request_id == request.request_id
                    )
                )
            ).one()
            await conn.execute(  # session_received_at: the steps' partition key (migration 0008)
                insert(steps).values(
                    **old.model_dump(mode="json"),
                    session_id=sid,
                    created_at=datetime.now(UTC),
                    session_received_at=received_at,
                )
            )
        claim = await store.claim(request.request_id, "test", 30)
        assert claim is not None and claim.steps == [old]
        assert (await queries.step_calls(request.request_id, 1)) == [
            c.model_dump(mode="json") for c in old.calls
        ]
        assert (await queries.load([request.request_id]))[0].steps == [old]
    finally:
        await store.close()
