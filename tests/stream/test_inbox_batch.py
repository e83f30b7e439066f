"""The batched inbox against real PostgreSQL and Kafka: a batch is recorded in one transaction; a
message the database refuses is dead-lettered alone and the rest of its batch is recorded; nothing
is lost or stored twice; a worker commits no offset before the batch's transaction has committed.

The database refusal is made real with a CHECK constraint added to the test's own database (the
schema refuses everything PostgreSQL would, so no request the schema accepts is refused by the
stock tables); the rejection is PostgreSQL's own (SQLSTATE 23514), not a simulated error.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cases import cases
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from sqlalchemy import text
from stream_helpers import collect, make_requests, produce

from worker.config import Settings
from worker.schemas import Source
from worker.service import Reranker, limits_of
from worker.store.store import Store
from worker.stream.inbox import Inbox, Message

pytestmark = pytest.mark.integration

POISON_USER = "poison-user"
DLQ_TOPIC = f"test.batch.{uuid.uuid4().hex[:8]}.dlq"


class Submitted:
    """The walk runner's side of the inbox: which request_ids were handed over for a walk."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.on_done = asyncio.Event()

    async def submit(self, request_id: str, size: int | None = None) -> bool:
        self.ids.append(request_id)
        return True


@pytest.fixture(scope="module")
def batch_db(fresh_database):
    """A migrated database whose sessions table refuses one user_id (see the module's note)."""
    with fresh_database("llm4rerank_test_batch") as (_, url):
        asyncio.run(_add_poison_check(url))
        yield url


async def _add_poison_check(url: str) -> None:
    store = Store(url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(
                text(f"ALTER TABLE sessions ADD CONSTRAINT poison CHECK (user_id <> '{POISON_USER}')")
            )
    finally:
        await store.close()


def _message(body: bytes, offset: int) -> Message:
    return Message(body, Source(topic="batch.requests", partition=0, offset=offset), None, None)


async def _run_batch(url: str, kafka: str, bodies: list[bytes]) -> tuple[Submitted, list[tuple[bytes, dict]]]:
    """Accept `bodies` as one batch; (the runner's hand-overs, the dead letters Kafka acked)."""
    settings_ = Settings(llm_base_url="http://127.0.0.1:9/v1", database_url=url)
    store = Store(url)
    runner = Submitted()
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    dlq_topic = DLQ_TOPIC
    acked: list[tuple[bytes, dict]] = []

    async def send_and_wait(topic: str, key: bytes | None, value: bytes) -> Any:
        meta = await producer.send_and_wait(topic, value, key=key)
        acked.append((key or b"", orjson.loads(value)))
        return meta

    inbox = Inbox(
        store,
        runner,  # type: ignore[arg-type]
        Reranker(settings_, None),
        limits_of(settings_),
        send_and_wait,
        dlq_topic,
        deployment="batch-test",
        result_topic="batch.results",
    )
    try:
        await inbox.accept_batch([_message(b, i) for i, b in enumerate(bodies)])
    finally:
        await producer.stop()
        await store.close()
    return runner, acked


async def _stored(url: str, ids: list[str]) -> dict[str, int]:
    store = Store(url)
    try:
        async with store.engine.connect() as conn:
            rows = await conn.execute(
                text("select request_id, count(*) from sessions where request_id = any(:ids) group by 1"),
                {"ids": ids},
            )
            return {r[0]: r[1] for r in rows}
    finally:
        await store.close()


KINDS = st.lists(st.sampled_from(["ok", "poison", "invalid", "again"]), min_size=1, max_size=12)


@cases(12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(kinds=["ok", "ok", "poison", "ok", "ok"])
@given(kinds=KINDS)
async def test_a_batch_records_all_but_the_refused_message(
    batch_db: str, kafka: str, kinds: list[str]
) -> None:
    """Hostile batches (valid, refused by the database, unparsable, a request_id repeated): every
    valid request is stored exactly once and handed to a walk, each poison or invalid one is
    dead-lettered once, with its reason, and nothing else is."""
    tag = uuid.uuid4().hex[:8]
    requests = make_requests(len(kinds), seed=len(kinds), prefix=f"bat{tag}")
    bodies: list[bytes] = []
    valid: list[str] = []
    poison: list[str] = []
    invalid = 0
    first: bytes | None = None
    for kind, request in zip(kinds, requests, strict=True):
        if kind == "poison":
            request["user"]["user_id"] = POISON_USER
            poison.append(request["request_id"])
        elif kind == "invalid":
            bodies.append(b'{"request_id": "broken-' + tag.encode() + b'", "candidates": [')
            invalid += 1
            continue
        elif kind == "again" and first is not None:
            bodies.append(first)
            continue
        else:
            valid.append(request["request_id"])
        bodies.append(orjson.dumps(request))
        if len(valid) == 1 and kind != "poison" and first is None:
            first = bodies[-1]
    runner, dead = await _run_batch(batch_db, kafka, bodies)
    stored = await _stored(batch_db, valid + poison)
    assert stored == {rid: 1 for rid in valid}
    assert set(runner.ids) == set(valid)
    assert len(dead) == len(poison) + invalid
    assert sorted(k.decode() for k, d in dead if d["error"]["code"] == "unstorable") == sorted(poison)


@pytest.fixture
def offsets_db(fresh_database):
    with fresh_database("llm4rerank_test_batch_offsets") as (_, url):
        yield url


async def test_a_worker_commits_no_offset_before_its_batch_is_stored(
    offsets_db, kafka, sim_llm, stream_env, start_worker
) -> None:
    """While PostgreSQL holds the sessions table locked, the worker has the messages but cannot
    commit their transaction: its consumer group's committed offsets never pass what is stored.
    Once the lock goes, every request is stored once, answered, and its offset committed."""
    sim = sim_llm()
    n = 12
    url = offsets_db
    env = {**stream_env, "LLM4RERANK_DATABASE_URL": url, "LLM4RERANK_LLM_BASE_URL": sim.base_url}
    worker = start_worker(env)
    requests = make_requests(n, seed=9, prefix=f"off{uuid.uuid4().hex[:6]}")
    ids = [r["request_id"] for r in requests]
    store = Store(url)
    try:
        await _wait_log(worker.log, b"Worker]: Ready")
        async with store.engine.connect() as lock:
            await lock.execute(text("begin"))
            await lock.execute(text("lock table sessions in access exclusive mode"))
            await produce(kafka, env["LLM4RERANK_REQUEST_TOPIC"], [orjson.dumps(r) for r in requests])
            waited = time.monotonic()
            # three of faust's commit intervals (1 s) with the batch in hand and unstored
            while time.monotonic() - waited < 3.5:
                assert await _committed(kafka, env) == 0
                await asyncio.sleep(0.25)
            await lock.execute(text("rollback"))
        results = await collect(kafka, env["LLM4RERANK_RESULT_TOPIC"], set(ids), timeout_s=120)
        assert {k for k, _ in results} >= set(ids)
        assert await _stored(url, ids) == {rid: 1 for rid in ids}
        deadline = time.monotonic() + 30
        while await _committed(kafka, env) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        assert await _committed(kafka, env) == n
    finally:
        await store.close()
        worker.kill()


async def _committed(kafka: str, env: dict[str, str]) -> int:
    """The consumer group's committed offsets on the request topic, summed over partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(env["LLM4RERANK_CONSUMER_GROUP"])
    finally:
        await admin.close()
    return sum(
        max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == env["LLM4RERANK_REQUEST_TOPIC"]
    )


async def _wait_log(path: Any, marker: bytes, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and marker in path.read_bytes():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{marker!r} not in {path} after {timeout_s}s")
