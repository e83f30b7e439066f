"""The openai client's transports (LLM4RERANK_LLM_TRANSPORT) against sim-llm (a simulated server):
aiohttp, the default, and httpx answer alike through the real `openai` client, and an endpoint
that is not there reaches the retry policy as the client's own connection error on both."""

from __future__ import annotations

import time

import openai
import pytest
from engine_kit import free_port

from worker.config import Settings
from worker.errors import DeadlineExceeded
from worker.policies.chat import OpenAIChat

pytestmark = pytest.mark.integration

SIM_MODEL = "sim-llm-simulated"
MESSAGES = [
    {"role": "system", "content": "You rerank items."},
    {"role": "user", "content": 'Answer {"next_node": "stop"}'},
]
FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "next",
        "schema": {
            "type": "object",
            "properties": {"next_node": {"type": "string"}},
            "required": ["next_node"],
        },
    },
}


def test_aiohttp_is_the_default_transport() -> None:
    assert Settings(llm_base_url="http://127.0.0.1:9/v1").llm_transport == "aiohttp"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_each_transport_talks_to_sim_llm(sim, transport: str) -> None:
    chat = OpenAIChat(Settings(llm_base_url=sim.base_url, llm_model=SIM_MODEL, llm_transport=transport))
    try:
        expected = openai.DefaultAioHttpClient if transport == "aiohttp" else openai.DefaultAsyncHttpxClient
        assert isinstance(chat.client._client, expected)
        assert SIM_MODEL in await chat.check()
        calls = [await chat.complete(MESSAGES, FORMAT, time.monotonic() + 30) for _ in range(3)]
    finally:
        await chat.close()
    for call in calls:
        assert call.error is None and call.raw and "next_node" in call.raw
        assert call.prompt_tokens > 0 and call.completion_tokens > 0
        assert [a.status for a in call.attempts] == [200]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_an_absent_endpoint_is_retried_until_the_deadline(transport: str) -> None:
    base = f"http://127.0.0.1:{free_port()}/v1"
    chat = OpenAIChat(
        Settings(llm_base_url=base, llm_model=SIM_MODEL, llm_transport=transport, llm_retry_max_wait_s=0.05)
    )
    try:
        with pytest.raises(DeadlineExceeded) as info:
            await chat.complete(MESSAGES, FORMAT, time.monotonic() + 3.0)
    finally:
        await chat.close()
    [call] = info.value.calls
    assert len(call.attempts) > 1 and all(a.status is None for a in call.attempts)
    # httpx: APIConnectionError; aiohttp: APITimeoutError ("Cannot connect to host"): both retried
    assert all(
        ("Connection" if transport == "httpx" else "Cannot connect") in (a.error or "") for a in call.attempts
    )
