"""The OpenAI-compatible client against a small local HTTP server: retries, errors, the
in-flight limit and the deadline."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time

import pytest
from engine_kit import (
    FakeLLMServer,
    default_prompts,
    example_requests,
    free_port,
    ids,
    is_permutation,
    until,
)

from worker.config import Settings
from worker.engine.nodes import plan_walk
from worker.engine.walk import walk
from worker.errors import ConfigError, DeadlineExceeded
from worker.policies.chat import OpenAIChat
from worker.policies.heuristic import HeuristicPolicy
from worker.policies.llm import LLMPolicy

MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def settings(base_url: str, **kw) -> Settings:
    values = {
        "llm_base_url": base_url,
        "llm_model": "test-model",
        "llm_max_inflight": 2,
        "llm_retry_max_wait_s": 0.05,
        **kw,
    }
    return Settings(**values)


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


async def test_retries_429_and_500_then_succeeds(llm_server: FakeLLMServer) -> None:
    llm_server.script = [(429, "slow down", 0), (500, "oops", 0), (200, '{"next_node": "stop"}', 0)]
    chat = OpenAIChat(settings(llm_server.base_url))
    try:
        call = await chat.complete(MESSAGES, FORMAT, soon())
    finally:
        await chat.close()
    assert call.raw == '{"next_node": "stop"}' and call.error is None
    assert call.retries == 2 and llm_server.requests == 3
    assert [a.status for a in call.attempts] == [429, 500, 200]
    assert (call.prompt_tokens, call.completion_tokens) == (11, 7)
    assert call.messages == MESSAGES and call.response_format == FORMAT
    assert call.latency_ms > 0


async def test_400_is_not_retried_and_is_recorded(llm_server: FakeLLMServer) -> None:
    llm_server.script = [(400, "response_format not supported", 0)]
    chat = OpenAIChat(settings(llm_server.base_url))
    try:
        call = await chat.complete(MESSAGES, FORMAT, soon())
    finally:
        await chat.close()
    assert llm_server.requests == 1
    assert call.raw is None and call.retries == 0
    assert call.error.startswith("HTTP 400") and "response_format not supported" in call.error


async def test_persistent_500_is_retried_until_the_deadline_with_every_attempt_recorded(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.script = [(503, "down", 0)] * 200
    chat = OpenAIChat(settings(llm_server.base_url))
    try:
        with pytest.raises(DeadlineExceeded) as info:
            await chat.complete(MESSAGES, None, soon(0.8))
    finally:
        await chat.close()
    assert "unavailable" in str(info.value) and "HTTP 503" in str(info.value)
    [call] = info.value.calls
    assert call.deadline_passed and call.raw is None and call.error
    assert len(call.attempts) == llm_server.requests > 2
    assert all(a.status == 503 and "down" in a.error and a.latency_ms > 0 for a in call.attempts)
    assert call.retries == len(call.attempts) - 1
    assert call.latency_ms >= sum(a.latency_ms for a in call.attempts)


async def test_connection_refused_is_retried_until_the_deadline() -> None:
    chat = OpenAIChat(settings(f"http://127.0.0.1:{free_port()}/v1"))
    started = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded) as info:
            await chat.complete(MESSAGES, None, soon(0.3))
        assert time.monotonic() - started < 2.0
    finally:
        await chat.close()
    [call] = info.value.calls
    assert len(call.attempts) > 1 and all(a.status is None for a in call.attempts)
    # httpx says APIConnectionError; over aiohttp the client reports it as a connect timeout
    assert all("Connection" in a.error or "Cannot connect" in a.error for a in call.attempts)


async def test_dropped_connections_are_retried_until_the_deadline() -> None:
    accepted = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    chat = OpenAIChat(settings(f"http://127.0.0.1:{port}/v1"))
    try:
        with pytest.raises(DeadlineExceeded) as info:
            await chat.complete(MESSAGES, None, soon(0.3))
    finally:
        await chat.close()
        server.close()
        await server.wait_closed()
    assert accepted == len(info.value.calls[0].attempts) > 1


async def test_a_hanging_server_ends_at_the_deadline_with_the_attempt_recorded(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.script = [(200, '{"next_node": "stop"}', 30.0)]
    chat = OpenAIChat(settings(llm_server.base_url))
    started = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded) as info:
            await chat.complete(MESSAGES, None, soon(0.4))
    finally:
        await chat.close()
        llm_server.release.set()
    assert time.monotonic() - started < 1.5
    [call] = info.value.calls
    assert call.attempts[0].status is None and "Timeout" in call.attempts[0].error


async def test_in_flight_limit(llm_server: FakeLLMServer) -> None:
    llm_server.script = [(200, '{"next_node": "stop"}', 0.05)] * 8
    chat = OpenAIChat(settings(llm_server.base_url, llm_max_inflight=2))
    try:
        calls = await asyncio.gather(*(chat.complete(MESSAGES, None, soon()) for _ in range(8)))
    finally:
        await chat.close()
    assert all(c.raw for c in calls) and llm_server.requests == 8
    assert llm_server.peak == 2
    assert chat.in_flight == 0


async def test_short_deadline_against_a_slow_server(llm_server: FakeLLMServer) -> None:
    llm_server.script = [(200, '{"next_node": "stop"}', 5.0)]
    chat = OpenAIChat(settings(llm_server.base_url))
    started = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded):
            await chat.complete(MESSAGES, None, soon(0.3))
    finally:
        await chat.close()
    assert 0.25 <= time.monotonic() - started < 2.0


async def test_a_passed_deadline_sends_nothing(llm_server: FakeLLMServer) -> None:
    chat = OpenAIChat(settings(llm_server.base_url))
    try:
        with pytest.raises(DeadlineExceeded):
            await chat.complete(MESSAGES, None, time.monotonic() - 1)
    finally:
        await chat.close()
    assert llm_server.requests == 0


async def test_waiting_for_a_slot_respects_the_deadline(llm_server: FakeLLMServer) -> None:
    llm_server.script = [(200, '{"next_node": "stop"}', 1.0)] * 3
    chat = OpenAIChat(settings(llm_server.base_url, llm_max_inflight=1))
    try:
        slow = asyncio.create_task(chat.complete(MESSAGES, None, soon()))
        await until(lambda: llm_server.in_flight == 1)  # the only slot is taken
        with pytest.raises(DeadlineExceeded, match="slot"):
            await chat.complete(MESSAGES, None, soon(0.2))
        llm_server.release.set()
        assert (await slow).raw
    finally:
        await chat.close()


async def test_check_names_what_to_fix(llm_server: FakeLLMServer) -> None:
    chat = OpenAIChat(settings(llm_server.base_url))
    try:
        assert await chat.check() == ["test-model"]
    finally:
        await chat.close()
    chat = OpenAIChat(settings(llm_server.base_url, llm_model="other"))
    try:
        with pytest.raises(ConfigError, match="LLM4RERANK_LLM_MODEL"):
            await chat.check()
    finally:
        await chat.close()
    chat = OpenAIChat(settings(f"http://127.0.0.1:{free_port()}/v1"))
    try:
        with pytest.raises(ConfigError, match="LLM4RERANK_LLM_BASE_URL"):
            await chat.check()
    finally:
        await chat.close()
    with pytest.raises(ConfigError, match="LLM4RERANK_LLM_BASE_URL"):
        OpenAIChat(Settings(llm_base_url=None))


# ---------------------------------------------------------------------------------------------
# the walk over HTTP with a deadline


def answer(request, order: list[int], node: str) -> str:
    return json.dumps({"ranking": order, "next_node": node})


async def test_walk_deadline_at_the_first_call_over_http(llm_server: FakeLLMServer) -> None:
    request = example_requests()[0]
    llm_server.script = [(200, answer(request, list(range(1, 21)), "stop"), 5.0)]
    chat = OpenAIChat(settings(llm_server.base_url))
    plan = plan_walk(request, deadline_ms=300)
    plan = dataclasses.replace(plan, max_steps=5, deadline_ms=300)
    started = time.monotonic()
    try:
        outcome = await walk(request, LLMPolicy(chat, default_prompts()), plan, fallback=HeuristicPolicy())
    finally:
        await chat.close()
    assert time.monotonic() - started < 2.0
    assert outcome.status == "degraded" and outcome.policy == "llm+heuristic"
    assert outcome.reason.startswith("deadline of 300 ms passed at accuracy")
    assert is_permutation(outcome.ranking, request)


async def test_walk_deadline_later_keeps_the_best_list_over_http(llm_server: FakeLLMServer) -> None:
    request = example_requests()[0]
    reverse = list(range(20, 0, -1))
    llm_server.script = [
        (200, answer(request, reverse, "diversity"), 0),
        (200, answer(request, list(range(1, 21)), "stop"), 5.0),
    ]
    chat = OpenAIChat(settings(llm_server.base_url))
    plan = plan_walk(request)
    plan = dataclasses.replace(plan, max_steps=5, deadline_ms=400)
    try:
        outcome = await walk(request, LLMPolicy(chat, default_prompts()), plan, fallback=HeuristicPolicy())
    finally:
        await chat.close()
    assert outcome.status == "degraded" and outcome.policy == "llm"
    assert outcome.reason.startswith("deadline of 400 ms passed at diversity")
    assert outcome.ranking == [ids(request)[i - 1] for i in reverse]


def test_free_port_is_closed() -> None:
    port = free_port()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
