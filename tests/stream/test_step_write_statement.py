"""The driver's one-statement step write (parts' upsert as a CTE, steps from one JSON document)
stores exactly the rows SQLAlchemy's portable insert stores: JSON null apart from SQL NULL, a
column a row leaves out as NULL, any text the portable path takes, the prompt parts once; a
repeated step is left alone; what one path refuses, the other refuses too."""

from __future__ import annotations

import random

import pytest
from cases import cases
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from sqlalchemy import select
from stream_helpers import make_requests

from worker.engine.steps import LLMCall, RepairCount, StepRecord
from worker.schemas import RerankRequest
from worker.store.faults import is_data_error
from worker.store.store import Store
from worker.store.tables import prompt_parts, sessions, steps

pytestmark = pytest.mark.integration

SKIP = {"id", "session_id", "created_at", "session_received_at"}


@pytest.fixture(scope="module")
def write_pg_url(fresh_database):
    with fresh_database("llm4rerank_test_step_write") as (_, url):
        yield url


@pytest.fixture
async def store(write_pg_url: str):
    s = Store(write_pg_url)
    yield s
    await s.close()


def _steps(seed: int) -> list[StepRecord]:
    rng = random.Random(seed)
    out = []
    for n in range(1, 6):
        calls = [
            LLMCall(
                messages=[
                    {"role": "system", "content": f"system {seed % 2}"},
                    {"role": "user", "content": f"user {seed} {n} " + "é" * rng.randint(0, 5)},
                ],
                raw=rng.choice(["", "{}", '{"x": [1, 2]}', "ünïcode"]),
                prompt_tokens=rng.randint(0, 99),
                completion_tokens=rng.randint(0, 9),
                latency_ms=rng.random() * 10,
            )
            for _ in range(rng.randint(0, 2))
        ]
        out.append(
            StepRecord(
                step=n,
                node=rng.choice(["accuracy", "fairness", "stop"]),
                policy="llm",
                ranking=[f"i{k}" for k in range(rng.randint(0, 4))],
                removed=rng.choice([None, [], ["i9"]]),
                next_node=rng.choice([None, "diversity"]),
                offered=rng.choice([[], ["accuracy", "stop"]]),
                pool_size=rng.choice([0, 3]),
                calls=calls,
                notes=rng.choice([[], ["a note", "ü"]]),
                problem=rng.choice([None, "bad json"]),
                repair=rng.choice([None, RepairCount()]),
                withdrawn=rng.choice([None, [["i1"]]]),
            )
        )
    return out


async def _ids(store: Store, seed: int) -> list[int]:
    requests = [RerankRequest.model_validate(r) for r in make_requests(2, seed=seed, prefix=f"sw{seed}")]
    await store.receive([(r, None) for r in requests])
    async with store.engine.connect() as conn:
        found = await conn.execute(
            select(sessions.c.id).where(sessions.c.request_id.in_([r.request_id for r in requests]))
        )
        return sorted(found.scalars())


async def _rows(store: Store, session_id: int) -> list[dict[str, object]]:
    async with store.engine.connect() as conn:
        found = await conn.execute(
            select(steps).where(steps.c.session_id == session_id).order_by(steps.c.step)
        )
        return [{k: v for k, v in r.items() if k not in SKIP} for r in found.mappings()]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_one_statement_stores_the_portable_rows(store: Store, seed: int) -> None:
    assert store.hot is not None
    hot_id, portable_id = await _ids(store, seed)
    records = _steps(seed)
    await store.add_steps([(hot_id, s) for s in records[:3]])  # a group commit of three
    for s in records[3:]:
        await store.add_steps([(hot_id, s)])
    await store.add_steps([(hot_id, records[0])])  # stored already: left alone
    hot, store.hot = store.hot, None
    try:
        await store.add_steps([(portable_id, s) for s in records])
    finally:
        store.hot = hot
    written = await _rows(store, hot_id)
    assert len(written) == len(records)
    assert written == await _rows(store, portable_id)
    restored = await store.claim(*(await _request_ids(store, hot_id)), "owner", 30.0)
    assert restored is not None and restored.steps == records


async def test_parts_are_stored_once_and_dated(store: Store) -> None:
    (sid, _) = await _ids(store, 9)
    records = _steps(9)
    await store.add_steps([(sid, s) for s in records])
    async with store.engine.connect() as conn:
        parts = (await conn.execute(select(prompt_parts.c.hash, prompt_parts.c.last_used))).all()
    assert parts and len({h for h, _ in parts}) == len(parts)
    assert all(day is not None for _, day in parts)


async def _request_ids(store: Store, session_id: int) -> tuple[str]:
    async with store.engine.connect() as conn:
        rid = (
            await conn.execute(select(sessions.c.request_id).where(sessions.c.id == session_id))
        ).scalar_one()
    return (rid,)


_hostile = st.sampled_from(["\x00", "\ud800", "\udfff", '"', "\\", "\u2028", "é", "\U0001f600"])
_text = st.text(_hostile | st.characters(codec=None), max_size=12)  # any plane, often hostile


@cases(30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    notes=st.lists(_text, max_size=3),
    problem=st.none() | _text,
    raw=_text,
    latency=st.floats(min_value=0, max_value=1e9),
)
async def test_generated_text_is_stored_or_refused_alike(
    store: Store, notes: list[str], problem: str | None, raw: str, latency: float
) -> None:
    call = LLMCall(messages=[{"role": "user", "content": raw}], raw=raw, latency_ms=latency)
    record = StepRecord(step=1, node="accuracy", policy="llm", notes=notes, problem=problem, calls=[call])
    hot_id, portable_id = await _ids(store, random.randrange(10**9))
    outcomes = []
    for sid, hot in ((hot_id, store.hot), (portable_id, None)):
        kept, store.hot = store.hot, hot
        try:
            await store.add_steps([(sid, record)])
            outcomes.append("stored")
        except Exception as exc:  # the driver's error or SQLAlchemy's wrapper of it
            assert is_data_error(exc), exc
            outcomes.append("refused")
        finally:
            store.hot = kept
    assert outcomes[0] == outcomes[1]
    assert await _rows(store, hot_id) == await _rows(store, portable_id)
