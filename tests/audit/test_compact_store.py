"""The compact trace store (migration 0009_compact_store): the request stored once per session,
step lists front-coded, repair counts without zeros, a step's own calls deflated. Every prompt
still reads back byte for byte (trace show --calls against what sim-llm received, recorded replay),
rows stored before the change read back unchanged, and the migration goes up and down with data."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic import command
from cases import cases
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from test_lean_steps import calls as generated_calls
from test_lean_steps import text as any_text

from worker.audit.queries import TraceQueries
from worker.engine.steps import LLMCall, RepairCount, StepRecord
from worker.samples import sample_requests
from worker.schemas import RerankRequest
from worker.store.calls_codec import CODEC, deflate_calls, inflate_calls
from worker.store.compact import pack_step, unpack_step
from worker.store.migrate import alembic_config
from worker.store.parts import join_calls, refs_of, split_calls
from worker.store.storage import storage_statements
from worker.store.store import Store, step_row
from worker.store.tables import sessions, steps

CLI = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "llm4rerank")
ids = st.lists(any_text, max_size=25)
step_records = st.builds(
    StepRecord,
    step=st.integers(1, 50),
    node=st.sampled_from(["accuracy", "diversity", "fairness", "backward", "stop"]),
    policy=st.sampled_from(["llm", "walk", "heuristic"]),
    ranking=st.one_of(st.none(), ids, ids.map(lambda xs: [f"shop-item-{x}" for x in xs])),
    removed=st.one_of(st.none(), ids.map(lambda xs: [f"p/{x}" for x in xs])),
    repair=st.one_of(
        st.none(),
        st.builds(
            RepairCount,
            answers=st.integers(0, 3),
            permutations=st.integers(0, 3),
            appended=st.integers(0, 3),
            duplicates=st.integers(0, 3),
            unknown=st.integers(0, 3),
            ties=st.integers(0, 3),
        ),
    ),
    calls=generated_calls,
)


@cases(200)
@given(step_records)
def test_a_compact_step_row_reads_back_as_recorded(record: StepRecord) -> None:
    """Encode, store as JSON, decode: the same columns; a row in the old (full) form decodes to
    itself; the calls deflated and joined give back every call as recorded."""
    full = record.model_dump(mode="json")
    compact = orjson.loads(orjson.dumps(pack_step(dict(full))))
    assert unpack_step(compact) == full
    assert unpack_step(full) == full  # rows stored before the change
    if isinstance(compact["ranking"], dict):
        assert len(orjson.dumps(compact["ranking"])) < len(orjson.dumps(full["ranking"]))
    parts: dict[str, Any] = {}
    stored = orjson.loads(orjson.dumps(deflate_calls(split_calls(full["calls"], parts))))
    assert refs_of(stored) == set(parts)
    assert join_calls(stored, parts) == full["calls"]
    if isinstance(stored, dict):
        assert stored["n"] == len(full["calls"]) and sorted(stored["parts"]) == sorted(parts)


def test_deflated_calls_are_smaller_and_an_unknown_codec_is_an_error() -> None:
    call = LLMCall(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": "Pool (oldest first):\n1 accuracy: 3,1,2\nNode: diversity\n"},
        ],
        raw='{"ranking":[1,2,3],"next_node":"stop"}',
        prompt_tokens=10,
    ).model_dump(mode="json")
    lean = split_calls([call], {})
    packed = deflate_calls(lean)
    assert packed["codec"] == CODEC and len(orjson.dumps(packed)) < len(orjson.dumps(lean))
    assert inflate_calls(packed) == lean
    with pytest.raises(ValueError, match="unknown codec"):
        inflate_calls({**packed, "codec": "deflate-d0"})


def test_storage_statements_name_the_table_or_partition() -> None:
    now = storage_statements("steps")
    later = storage_statements("steps_2026_11", base="steps")
    assert now and all("SET COMPRESSION lz4" in s and '"steps"' in s for s in now)
    assert [s.replace('"steps_2026_11"', '"steps"') for s in later] == now
    assert storage_statements("steps", lz4=False) == [] and storage_statements("other") == []


def _digest(messages: list[dict[str, Any]]) -> str:
    """What sim-llm logs for a call: the SHA-256 of the messages' JSON as the client sent it."""
    return hashlib.sha256(orjson.dumps(messages)).hexdigest()


@pytest.mark.integration
def test_trace_show_calls_and_recorded_replay_give_every_prompt_back(
    fresh_database, sim_llm, tmp_path
) -> None:
    """Offline rerank into PostgreSQL through the openai client against sim-llm (SIMULATED) with a
    call log: the rows are compact, `trace show --calls --json` prints every prompt sim-llm
    received, byte for byte, and recorded replay reproduces every session."""
    log = tmp_path / "calls.jsonl"
    sim = sim_llm("--seed", "6", "--call-log", str(log))
    requests = sample_requests(5, seed=21, prefix="compact")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in requests))
    env = {
        "PATH": "/usr/bin:/bin",
        "LLM4RERANK_LLM_BASE_URL": sim.base_url,
        "LLM4RERANK_LLM_MODEL": "sim-llm-simulated",
    }
    with fresh_database("llm4rerank_test_compact") as (_, url):
        run = [CLI, "rerank", str(source), "--store", url, "--out", str(tmp_path / "out.jsonl")]
        done = subprocess.run(run, env=env, capture_output=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        received = [orjson.loads(line)["prompt"] for line in log.read_bytes().splitlines() if line.strip()]

        shown: list[str] = []
        for r in requests:
            out = subprocess.run(
                [CLI, "trace", "show", r["request_id"], "--calls", "--json", "--db", url],
                env=env,
                capture_output=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr[-2000:]
            detail = orjson.loads(out.stdout)
            shown += [_digest(c["messages"]) for s in detail["steps"] for c in s.get("calls") or []]
            if r is requests[0]:  # the text form prints every line of every message as sent
                printed = subprocess.run(
                    [CLI, "trace", "show", r["request_id"], "--calls", "--db", url],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout.splitlines()
                lines = [
                    "    " + line
                    for s in detail["steps"]
                    for c in s.get("calls") or []
                    for m in c["messages"]
                    for line in m["content"].split("\n")
                ]
                assert lines and all(line in printed for line in lines)
        # the calls the walks made are the last ones logged (the client probes the server first)
        assert len(received) >= len(shown) >= 2 * len(requests)
        assert sorted(shown) == sorted(received[-len(shown) :])

        rows = asyncio.run(_raw_rows(url))
        assert rows["requests"] and all(rows["requests"])  # SQL NULL: the request is stored once, as text
        assert any(isinstance(c, dict) and c["codec"] == CODEC for c in rows["calls"])

        replay = subprocess.run(
            [
                CLI,
                "replay",
                *[r["request_id"] for r in requests],
                "--mode",
                "recorded",
                "--db",
                url,
                "--report",
                str(tmp_path / "report.json"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-2000:]
        n = len(requests)
        assert f"reproduced (recorded)        {n}/{n}" in replay.stdout


async def _raw_rows(url: str) -> dict[str, list[Any]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return {
                "requests": list(
                    (await conn.execute(text("SELECT request IS NULL FROM sessions"))).scalars()
                ),
                "calls": list((await conn.execute(select(steps.c.calls))).scalars()),
            }
    finally:
        await engine.dispose()


OLD_STEP = StepRecord(
    step=1,
    node="accuracy",
    policy="llm",
    ranking=["old-a", "old-b", "old-c"],
    removed=["old-x", "old-y"],
    repair=RepairCount(answers=1, permutations=1),
    calls=[
        LLMCall(
            messages=[{"role": "system", "content": "sys \u00e9"}, {"role": "user", "content": "u"}],
            response_format={"type": "json_object"},
            raw='{"ranking":[2,1,3]}',
        )
    ],
)


@pytest.mark.integration
def test_the_migration_goes_up_and_down_with_data(fresh_database) -> None:
    """At 0008: a session and a step in the old form. Up to 0009: the old row reads back unchanged
    beside a compact one written by the Store. Down to 0008: every row is back in full form, as
    0008's readers expect, and reads back the same; up again."""
    with fresh_database("llm4rerank_test_compact_mig") as (_, url):
        config = alembic_config(url)
        command.downgrade(config, "0008_partitions")
        old = RerankRequest.model_validate(sample_requests(1, seed=5, prefix="old")[0])
        asyncio.run(_insert_old(url, old))
        command.upgrade(config, "head")
        new = RerankRequest.model_validate(sample_requests(1, seed=6, prefix="new")[0])
        new_step = OLD_STEP.model_copy(
            update={"ranking": [f"new-item-{i}" for i in range(8)], "removed": None}
        )
        asyncio.run(_insert_new(url, new, new_step))
        expected = {old.request_id: (old, [OLD_STEP]), new.request_id: (new, [new_step])}
        asyncio.run(_check(url, expected, compact=True))

        command.downgrade(config, "0008_partitions")
        asyncio.run(_check(url, expected, compact=False))
        command.upgrade(config, "head")
        asyncio.run(_check(url, expected, compact=False))


async def _insert_old(url: str, request: RerankRequest) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            body = request.model_dump(mode="json", exclude_none=True)
            received_at = datetime.now(UTC)
            sid = (
                await conn.execute(
                    insert(sessions)
                    .values(
                        request_id=request.request_id,
                        user_id=request.user.user_id,
                        goal=request.goal,
                        request=body,
                        request_text=orjson.dumps(body).decode(),
                        status="pending",
                        received_at=received_at,
                        attempts=0,
                    )
                    .returning(sessions.c.id)
                )
            ).scalar_one()
            await conn.execute(
                insert(steps).values(
                    **OLD_STEP.model_dump(mode="json"),
                    session_id=sid,
                    session_received_at=received_at,
                    created_at=datetime.now(UTC),
                )
            )
    finally:
        await engine.dispose()


async def _insert_new(url: str, request: RerankRequest, step: StepRecord) -> None:
    store = Store(url)
    try:
        await store.receive_checked([(request, None)])
        claim = await store.claim(request.request_id, "t", 30)
        assert claim is not None
        await store.add_steps([(claim.session_id, step)])
        async with store.engine.connect() as conn:
            coded = {"prefix": "new-item-", "ids": [str(i) for i in range(8)]}
            assert step_row(0, step, datetime.now(UTC), {})["ranking"] == coded
            stored = await conn.execute(select(steps.c.ranking).where(steps.c.session_id == claim.session_id))
            assert stored.scalar_one() == coded
    finally:
        await store.close()


async def _check(
    url: str, expected: dict[str, tuple[RerankRequest, list[StepRecord]]], *, compact: bool
) -> None:
    """Every session and step reads back as written, through the store's readers (at head) or the
    columns themselves (after the downgrade, in the form 0008's code reads)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            rows = (
                await conn.execute(select(sessions.c.request_id, sessions.c.request, sessions.c.id))
            ).all()
            for rid, request, sid in rows:
                want, want_steps = expected[rid]
                if not compact:
                    assert RerankRequest.model_validate(request) == want
                    raw = (
                        (await conn.execute(select(steps).where(steps.c.session_id == sid))).mappings().all()
                    )
                    assert [r["ranking"] for r in raw] == [s.ranking for s in want_steps]
                    assert [r["removed"] for r in raw] == [s.removed for s in want_steps]
                    assert [r["repair"] for r in raw] == [
                        s.model_dump(mode="json")["repair"] for s in want_steps
                    ]
                    assert all(isinstance(r["calls"], list) for r in raw)
        if version != "0008_partitions":
            loaded = await TraceQueries(engine).load(list(expected))
            assert {s.request_id: s.steps for s in loaded} == {k: v[1] for k, v in expected.items()}
            for s in loaded:
                assert RerankRequest.model_validate(s.row["request"]) == expected[s.request_id][0]
    finally:
        await engine.dispose()
