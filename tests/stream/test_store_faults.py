"""The store against values PostgreSQL refuses: a data error is the record's own outcome, never an
outage; a group commit isolates the refused step; a request_id reused with other content is a
conflict; replay-of is kept only for stored originals."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import cast, select
from sqlalchemy.dialects.postgresql import JSONB
from stream_helpers import make_requests

from worker.engine.steps import LLMCall, StepRecord
from worker.schemas import RerankRequest, Source
from worker.store.faults import is_data_error, is_db_down
from worker.store.journal import GroupCommitWriter
from worker.store.store import Store, stored_request
from worker.store.tables import sessions, steps

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def faults_pg_url(fresh_database):
    with fresh_database("llm4rerank_test_faults") as (_, url):
        yield url


@pytest.fixture
async def store(faults_pg_url: str):
    s = Store(faults_pg_url)
    yield s
    await s.close()


async def _session_id(store: Store, request_id: str) -> int:
    async with store.engine.connect() as conn:
        return (
            await conn.execute(select(sessions.c.id).where(sessions.c.request_id == request_id))
        ).scalar_one()


async def test_a_nul_is_a_data_error_not_an_outage(store: Store) -> None:
    request = RerankRequest.model_validate(make_requests(1, seed=1, prefix="nul")[0])
    await store.receive([(request, None)])
    sid = await _session_id(store, request.request_id)
    bad = StepRecord(step=1, node="accuracy", policy="llm", notes=["a\x00b"])
    with pytest.raises(Exception) as info:
        await store.add_steps([(sid, bad)])
    assert is_data_error(info.value) and not is_db_down(info.value)


async def test_group_commit_isolates_the_refused_step(store: Store) -> None:
    requests = [RerankRequest.model_validate(r) for r in make_requests(4, seed=2, prefix="iso")]
    await store.receive([(r, None) for r in requests])
    ids = [await _session_id(store, r.request_id) for r in requests]
    writer = GroupCommitWriter(store, linger_s=0.05)
    good = StepRecord(step=1, node="accuracy", policy="llm")
    escaped = StepRecord(step=1, node="accuracy", policy="llm", notes=["x\x00y"], problem="p\x00")
    too_long = StepRecord(step=1, node="n" * 40, policy="llm")  # node is varchar(32)
    results = await asyncio.wait_for(
        asyncio.gather(
            writer.write(ids[0], good),
            writer.write(ids[1], escaped),
            writer.write(ids[2], too_long),
            writer.write(ids[3], good),
            return_exceptions=True,
        ),
        30,
    )
    await writer.stop()
    assert results[0] is None and results[1] is None and results[3] is None
    assert is_data_error(results[2])
    async with store.engine.connect() as conn:
        rows = {
            r.session_id: r
            for r in (await conn.execute(select(steps).where(steps.c.session_id.in_(ids)))).all()
        }
    assert set(rows) == {ids[0], ids[1], ids[3]}
    kept = rows[ids[1]]
    assert kept.notes[0] == "x\\u0000y" and kept.problem == "p\\u0000"
    assert any("escaped" in n for n in kept.notes)


def test_an_answer_with_nul_and_surrogates_is_kept_losslessly() -> None:
    raw = '{"ranking": [2, 1]}\x00 \ud800 end'
    call = LLMCall(messages=[], raw=raw)
    assert "\x00" not in call.raw and "\ud800" not in call.raw
    assert call.raw_replaced == [[19, 0], [21, 0xD800]]
    again = LLMCall.model_validate(call.model_dump(mode="json"))
    assert again.original_raw == raw


async def test_same_id_other_content_is_a_conflict(store: Store) -> None:
    first = make_requests(1, seed=3, prefix="conf")[0]
    other = {**first, "goal": first["goal"] + " and novelty"}
    receipt = await store.receive_checked([(RerankRequest.model_validate(first), Source(topic="t"))])
    assert not receipt.conflicts
    again = await store.receive_checked([(RerankRequest.model_validate(other), Source(topic="t"))])
    assert list(again.conflicts) == [first["request_id"]]
    reordered = dict(reversed(list(first.items())))  # same content, other key order
    same = await store.receive_checked([(RerankRequest.model_validate(reordered), Source(topic="t"))])
    assert not same.conflicts


async def test_replay_of_only_for_a_stored_original(store: Store) -> None:
    original, fake, real = [RerankRequest.model_validate(r) for r in make_requests(3, seed=4, prefix="rpl")]
    await store.receive([(original, None)])
    receipt = await store.receive_checked([(fake, None)], replay_of="nowhere", replay_mode="kafka")
    assert receipt.notes and "nowhere" in receipt.notes[0]
    await store.receive([(real, None)], replay_of=original.request_id, replay_mode="kafka")
    async with store.engine.connect() as conn:
        rows = {
            r.request_id: r
            for r in (
                await conn.execute(select(sessions.c.request_id, sessions.c.replay_of, sessions.c.notes))
            ).all()
        }
    assert rows[fake.request_id].replay_of is None and "nowhere" in rows[fake.request_id].notes[0]
    assert rows[real.request_id].replay_of == original.request_id


async def test_the_request_text_keeps_its_key_order(store: Store) -> None:
    body = make_requests(1, seed=5, prefix="order")[0]
    body["candidates"][0]["features"] = {"title": "T", "genre": ["g"], "year": 1999}
    text = __import__("orjson").dumps(body).decode()
    request = RerankRequest.model_validate(body)
    await store.receive([(request, None)], texts=[text])
    claim = await store.claim(request.request_id, "me", 30)
    assert claim is not None
    assert list(claim.request.candidates[0].features) == ["title", "genre", "year"]
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                select(sessions.c.request, cast(sessions.c.request_text, JSONB).label("as_jsonb")).where(
                    sessions.c.request_id == request.request_id
                )
            )
        ).one()
    # stored once, as text; JSONB would reorder the keys (shorter first): the text is what keeps them
    assert row.request is None
    assert list(stored_request(None, row.as_jsonb).candidates[0].features) != ["title", "genre", "year"]


async def test_a_refused_request_is_named_in_its_dead_letter(store: Store) -> None:
    """The schema refuses U+0000; should a refused value slip past it, the inbox's dead letter
    names the field and the SQLSTATE instead of waiting for a database that is up."""
    from worker.stream.inbox import unstorable

    body = make_requests(1, seed=6, prefix="slip")[0]
    valid = RerankRequest.model_validate(body)
    slipped = valid.model_copy(update={"goal": "accuracy\x00"})
    with pytest.raises(Exception) as info:
        await store.receive_checked([(slipped, Source(topic="t"))])
    assert is_data_error(info.value)
    error = unstorable(slipped, info.value)
    assert error.code == "unstorable" and error.details["field"] == "goal"
    assert error.details["sqlstate"].startswith("22")


async def test_the_byte_budget_admits_what_fits_and_one_oversized_request_alone() -> None:
    from worker.stream.budget import ByteBudget

    budget = ByteBudget(100)
    assert await budget.acquire(60) == 60
    waiting = asyncio.create_task(budget.acquire(60))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # 60 + 60 > 100: waits
    await budget.release(60)
    assert await asyncio.wait_for(waiting, 5) == 60
    await budget.release(60)
    assert await budget.acquire(10_000) == 100  # larger than the budget: runs alone
    assert budget.used == 100
