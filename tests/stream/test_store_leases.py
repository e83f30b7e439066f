"""The trace store on real PostgreSQL (and the same schema on SQLite): idempotent inbox, leases
that keep two workers off one session, steps that cannot be stored twice, the outbox."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from stream_helpers import make_requests

from worker.engine.steps import StepRecord
from worker.schemas import RerankRequest, RerankResult, Source, Usage, utcnow
from worker.store.migrate import upgrade_async
from worker.store.store import Store


def _result(request: RerankRequest, status: str = "ok") -> RerankResult:
    ranking = [c.item_id for c in request.candidates]
    return RerankResult(
        request_id=request.request_id,
        status=status,
        ranking=ranking,
        path=["accuracy", "stop"],
        llm_calls=1,
        usage=Usage(),
        model="m",
        prompt_version="p",
        latency_ms=1,
        reason=None,
        completed_at=utcnow(),
    )


@pytest.fixture(scope="module")
def store_pg_url(fresh_database):
    """A database of its own: what these tests leave unpublished must not reach a worker's outbox."""
    with fresh_database("llm4rerank_test_store") as (_, url):
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
async def store(request, store_pg_url: str, tmp_path: Path):
    url = store_pg_url if request.param == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    if request.param == "sqlite":
        await upgrade_async(url)
    s = Store(url)
    yield s
    await s.close()


async def test_inbox_is_idempotent_and_a_finished_request_is_published_again(store: Store) -> None:
    tag = store.engine.dialect.name
    request = RerankRequest.model_validate(make_requests(1, seed=1, prefix=f"inbox-{tag}")[0])
    source = Source(topic="t", partition=0, offset=7)
    assert await store.receive([(request, source)]) == []
    assert await store.receive([(request, source)]) == []  # pending: nothing to re-publish
    claim = await store.claim(request.request_id, "w1", 30)
    assert claim is not None and claim.attempts == 1 and claim.steps == []
    assert await store.complete(claim.session_id, "w1", _result(request))
    published = await store.publish_batch(_noop)
    assert published >= 1
    await asyncio.sleep(0.01)
    assert await store.receive([(request, source)]) == [request.request_id]
    rows = await store.unpublished()
    assert [r["request_id"] for r in rows if r["request_id"] == request.request_id] == [request.request_id]


async def test_a_lease_keeps_a_second_worker_off_until_it_expires(store: Store) -> None:
    tag = store.engine.dialect.name
    request = RerankRequest.model_validate(make_requests(1, seed=2, prefix=f"lease-{tag}")[0])
    await store.receive([(request, None)])
    first = await store.claim(request.request_id, "w1", 0.5)
    assert first is not None
    assert await store.claim(request.request_id, "w2", 30) is None
    await asyncio.sleep(0.6)
    second = await store.claim(request.request_id, "w2", 30)
    assert second is not None and second.attempts == 2
    assert not await store.complete(first.session_id, "w1", _result(request)), (
        "a worker whose lease expired must not store its result"
    )
    assert await store.complete(second.session_id, "w2", _result(request))
    assert await store.claim(request.request_id, "w3", 30) is None  # finished


async def test_a_step_is_stored_once_and_resume_sees_it(store: Store) -> None:
    tag = store.engine.dialect.name
    request = RerankRequest.model_validate(make_requests(1, seed=3, prefix=f"steps-{tag}")[0])
    await store.receive([(request, None)])
    claim = await store.claim(request.request_id, "w1", 30)
    assert claim is not None
    step = StepRecord(
        step=1,
        node="accuracy",
        policy="llm",
        ranking=[c.item_id for c in request.candidates],
        next_node="stop",
    )
    await store.add_steps([(claim.session_id, step)])
    await store.add_steps([(claim.session_id, step.model_copy(update={"node": "diversity"}))])
    await store.release("w1")
    again = await store.claim(request.request_id, "w2", 30)
    assert again is not None
    assert [s.node for s in again.steps] == ["accuracy"]


async def _noop(rows: list) -> None:
    return None


async def test_only_sessions_that_came_through_kafka_are_published(store: Store) -> None:
    tag = store.engine.dialect.name
    offline, kafka = (
        RerankRequest.model_validate(r) for r in make_requests(2, seed=4, prefix=f"outbox-{tag}")
    )
    await store.receive([(offline, None)])
    await store.receive([(kafka, Source(topic="requests", partition=1, offset=3))])
    for request in (offline, kafka):
        claim = await store.claim(request.request_id, "w1", 30)
        assert claim is not None
        assert await store.complete(claim.session_id, "w1", _result(request))
    waiting = {r["request_id"] for r in await store.unpublished()}
    assert kafka.request_id in waiting and offline.request_id not in waiting
    # the offline session's request_id now arrives through Kafka: its stored result goes out
    await asyncio.sleep(0.01)
    assert await store.receive([(offline, Source(topic="requests", partition=0, offset=9))]) == [
        offline.request_id
    ]
    assert offline.request_id in {r["request_id"] for r in await store.unpublished()}
