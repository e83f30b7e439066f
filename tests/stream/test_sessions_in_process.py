"""Sessions run in process against real PostgreSQL and sim-llm over HTTP: crashes are bounded,
time runs from receipt, the run configuration fixed at receipt holds on resume, and sessions
belong to their deployment."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from fault_kit import replay
from prometheus_client import REGISTRY
from service_kit import SIM_MODEL
from stream_helpers import make_requests, query

from worker.config import Settings
from worker.policies.chat import OpenAIChat
from worker.schemas import RerankRequest, Source, utcnow
from worker.service import Reranker
from worker.sessions import run_session
from worker.store.journal import GroupCommitWriter
from worker.store.store import Store
from worker.stream.runner import Runner

pytestmark = pytest.mark.integration


class PoisonChat:
    """The real transport, except that prompts naming a poison item raise, like a bug would;
    `times` limits how often (a transient bug)."""

    def __init__(self, inner: OpenAIChat, marker: str, times: int | None = None) -> None:
        self.inner, self.marker, self.times = inner, marker, times
        self.raised = 0

    async def complete(
        self,
        messages: list[dict[str, Any]],
        response_format: Any,
        deadline: float,
        max_tokens: int | None = None,
    ) -> Any:
        if self.marker in str(messages) and (self.times is None or self.raised < self.times):
            self.raised += 1
            raise RuntimeError("simulated bug in the walk")
        return await self.inner.complete(messages, response_format, deadline, max_tokens)


def _requests(n: int, prefix: str, seed: int = 3) -> list[RerankRequest]:
    return [RerankRequest.model_validate(r) for r in make_requests(n, seed=seed, prefix=prefix)]


def _poisoned(request: RerankRequest, marker: str) -> RerankRequest:
    data = request.model_dump(mode="json")
    data["candidates"][0].setdefault("features", {})["title"] = marker
    return RerankRequest.model_validate(data)


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def parts(sim_llm, pg_url):
    sim = sim_llm("--seed", "3", "--latency-ms", "5")
    settings = Settings(
        _env_file=None,
        llm_base_url=sim.base_url,
        llm_model=SIM_MODEL,
        database_url=pg_url,
        deadline_ms=20_000,
    )
    chat = OpenAIChat(settings)
    store = Store(pg_url)
    writer = GroupCommitWriter(store)
    yield settings, chat, store, writer
    await writer.stop()
    await chat.close()
    await store.close()


async def test_a_crashing_walk_releases_its_lease_is_retried_then_failed(parts) -> None:
    settings, chat, store, writer = parts
    healthy = _requests(6, "crashok")
    poison = [_poisoned(r, "POISON-1") for r in _requests(2, "crashbad", seed=4)]
    transient = [_poisoned(r, "FLAKY-1") for r in _requests(1, "crashonce", seed=5)]
    reranker = Reranker(settings, PoisonChat(PoisonChat(chat, "FLAKY-1", times=1), "POISON-1"))
    config = reranker.stored_config
    await store.receive(
        [(r, Source(topic="t")) for r in healthy + poison + transient],
        run_config=config,
        deployment="d1",
        result_topic="results",
    )
    crashes, failed = (
        _metric("llm4rerank_walk_crashes_total"),
        _metric("llm4rerank_sessions_failed_by_crashes_total"),
    )
    done = asyncio.Event()
    runner = Runner(
        store, writer, reranker, "w-crash", concurrency=4, lease_s=60, on_done=done, crash_limit=3
    )
    runner.start()
    for r in healthy + poison + transient:
        await runner.submit(r.request_id)
    async with asyncio.timeout(60):
        await runner.queue.join()  # in process: the runner itself ends every session
    await runner.drain(1)

    rows = {
        r["request_id"]: r
        for r in await query(
            settings.database_url,
            "select request_id, status, reason, crashes, lease_owner, "
            "last_error, result from sessions where request_id like 'crash%'",
        )
    }
    for r in poison:
        row = rows[r.request_id]
        assert row["status"] == "failed" and row["crashes"] == 3 and row["lease_owner"] is None
        assert row["reason"].startswith("the walk crashed 3 time(s)")
        assert "RuntimeError: simulated bug" in row["reason"]
        assert row["result"]["ranking"] == [c.item_id for c in r.candidates]
        assert row["result"]["policy"] == "none" and row["result"]["attempts"] == 4
    assert rows[transient[0].request_id]["status"] in ("ok", "degraded")
    assert rows[transient[0].request_id]["crashes"] == 1
    assert all(rows[r.request_id]["status"] == "ok" and rows[r.request_id]["crashes"] == 0 for r in healthy)
    assert _metric("llm4rerank_walk_crashes_total") - crashes == 2 * 3 + 1
    assert _metric("llm4rerank_sessions_failed_by_crashes_total") - failed == 2
    # recorded replay reproduces the failed sessions too (the walk stops where they stopped)
    replayed, reproduced, differing = await replay(settings.database_url, list(rows))
    assert replayed == reproduced == len(rows), differing


async def test_time_runs_from_receipt(parts) -> None:
    """A request received 10 s ago with a 2 s deadline is answered at once by the heuristic,
    without an LLM call, and its latency says how late it is."""
    settings, chat, store, writer = parts
    [late] = _requests(1, "late", seed=6)
    late = late.model_copy(update={"options": late.options.model_copy(update={"deadline_ms": 2000})})
    reranker = Reranker(settings, chat)
    await store.receive(
        [(late, None)], receipts=[utcnow() - timedelta(seconds=10)], run_config=reranker.stored_config
    )
    result, _, _ = await run_session(store, writer, reranker, late.request_id, "w-t", 60)
    assert result.status == "degraded" and result.policy == "llm+heuristic"
    assert result.reason.startswith("deadline of 2000 ms passed")
    assert result.llm_calls == 0 and result.latency_ms >= 10_000
    assert result.attempts == 1


async def test_a_resume_runs_with_the_configuration_stored_at_receipt(parts) -> None:
    settings, chat, store, writer = parts
    [request] = _requests(1, "cfg", seed=7)
    at_receipt = Reranker(settings.model_copy(update={"max_steps": 1}), chat)
    await store.receive([(request, None)], run_config=at_receipt.stored_config)
    redeployed = Reranker(settings.model_copy(update={"max_steps": 7, "llm_reasks": 0}), chat)
    result, _, _ = await run_session(store, writer, redeployed, request.request_id, "w-c", 60)
    # the stored cap of one LLM call, not today's seven
    assert result.llm_calls == 1 and result.path == ["accuracy", "stop"]
    [row] = await query(
        settings.database_url, "select run_config from sessions where request_id = :r", r=request.request_id
    )
    assert row["run_config"]["max_steps"] == 1 and row["run_config"]["llm_reasks"] == 1
    replayed, reproduced, differing = await replay(settings.database_url, [request.request_id])
    assert reproduced == replayed == 1, differing


async def test_sessions_belong_to_their_deployment(pg_url) -> None:
    store = Store(pg_url)
    try:
        mine, theirs = _requests(2, "dep-a", seed=8), _requests(2, "dep-b", seed=9)
        await store.receive(
            [(r, Source(topic="a.requests")) for r in mine], deployment="A", result_topic="a.results"
        )
        await store.receive(
            [(r, Source(topic="b.requests")) for r in theirs], deployment="B", result_topic="b.results"
        )
        orphans_a = set(await store.orphans("A"))
        assert {r.request_id for r in mine} <= orphans_a
        assert not {r.request_id for r in theirs} & orphans_a
        for r in mine + theirs:  # finish them all
            claim = await store.claim(r.request_id, "w", 30)
            assert claim is not None
            reranker = Reranker(Settings(_env_file=None), None, policy="heuristic")
            result, _ = await reranker.run(claim.request)
            assert await store.complete(claim.session_id, "w", result)
        sent: list[dict[str, Any]] = []

        async def capture(rows: list[dict[str, Any]]) -> None:
            sent.extend(rows)

        while await store.publish_batch(capture, deployment="A"):
            pass
        ours = {r["request_id"]: r["result_topic"] for r in sent if r["request_id"].startswith("dep-")}
        assert ours == {r.request_id: "a.results" for r in mine}
    finally:
        await store.close()
