"""Helpers for the navigation engine's tests: requests, a scripted model, a fake clock,
small HTTP servers (fixtures are re-exported by conftest.py); sim-llm is started by the shared
service_kit.py and its fixtures in tests/conftest.py.

Everything here is seeded and bounded in time; processes started here are stopped here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from service_kit import CLI, EXAMPLES, REPO, SIM_MODEL, SimLLM, clean_env, free_port

from worker.config import Settings
from worker.engine.prompts import PromptSet
from worker.engine.steps import LLMCall
from worker.errors import DeadlineExceeded
from worker.policies.llm import LLMPolicy
from worker.samples import GENRES, GOALS, TITLES
from worker.schemas import RerankRequest, parse_request

INVALID = REPO / "examples" / "invalid.jsonl"
__all__ = ["CLI", "EXAMPLES", "REPO", "SIM_MODEL", "SimLLM", "clean_env", "free_port"]


def request_dict(
    rng: random.Random,
    n: int = 20,
    rid: str = "t-1",
    goal: str | None = None,
    aspects: dict[str, Any] | None = None,
    max_steps: int | None = 5,
) -> dict[str, Any]:
    """A request shaped like examples/requests.jsonl, drawn from `rng`."""
    history = [
        {"item_id": f"h{i}", "features": {"title": rng.choice(TITLES), "genre": [rng.choice(GENRES)]}}
        for i in range(5)
    ]
    candidates = []
    for i in range(n):
        genres = rng.sample(GENRES, rng.choice([1, 1, 1, 2]))
        candidates.append(
            {
                "item_id": f"m{rng.randrange(1, 4000)}_{i}",
                "score": round(rng.random(), 4),
                "features": {"title": rng.choice(TITLES), "genre": genres, "year": rng.randrange(1970, 2020)},
            }
        )
    out: dict[str, Any] = {
        "request_id": rid,
        "goal": goal or rng.choice(GOALS),
        "user": {
            "user_id": f"u{rng.randrange(100)}",
            "features": {"gender": rng.choice("MF"), "age": rng.choice([18, 25, 35, 45])},
            "history": history,
        },
        "candidates": candidates,
        "aspects": aspects
        if aspects is not None
        else {"diversity": {"attribute": "genre"}, "fairness": {"attribute": "year", "split_at": 1996}},
    }
    if max_steps is not None:
        out["options"] = {"max_steps": max_steps}
    return out


def make_request(seed: int = 0, **kwargs: Any) -> RerankRequest:
    return parse_request(json.dumps(request_dict(random.Random(seed), **kwargs)))


def example_requests() -> list[RerankRequest]:
    return [parse_request(line) for line in EXAMPLES.read_bytes().splitlines() if line.strip()]


def ids(request: RerankRequest) -> list[str]:
    return [c.item_id for c in request.candidates]


def is_permutation(ranking: list[str], request: RerankRequest) -> bool:
    return sorted(ranking) == sorted(ids(request)) and len(set(ranking)) == len(ranking)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ScriptedChat:
    """A ChatTransport that answers from a script: a string is a raw answer, an exception is
    raised, a callable gets (messages, deadline) and returns either. Records every request."""

    script: list[Any]
    clock: FakeClock | None = None
    step_seconds: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def complete(
        self,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
        deadline: float,
        max_tokens: int | None = None,
    ) -> LLMCall:
        self.requests.append(
            {
                "messages": messages,
                "response_format": response_format,
                "deadline": deadline,
                "max_tokens": max_tokens,
            }
        )
        if self.clock is not None:
            if self.clock() >= deadline:
                raise DeadlineExceeded("fake deadline passed before the call")
            self.clock.advance(self.step_seconds)
        if not self.script:
            raise AssertionError(f"the walk asked for call {len(self.requests)}, the script has no more")
        item = self.script.pop(0)
        if callable(item) and not isinstance(item, str):
            item = item(messages, deadline)
        if isinstance(item, BaseException):
            raise item
        return LLMCall(
            messages=messages,
            response_format=response_format,
            raw=item,
            prompt_tokens=10,
            completion_tokens=5,
            latency_ms=1.0,
        )


@functools.cache
def _prompts_dir() -> Path:
    """Settings() reads the environment each time; hypothesis calls this hundreds of times."""
    return Settings().prompts_dir


def default_prompts(name: str = "default") -> PromptSet:
    return PromptSet.load(_prompts_dir(), name)


def scripted_policy(
    script: list[Any],
    *,
    prompts: str = "default",
    structured: bool = True,
    reasks: int = 1,
    clock: FakeClock | None = None,
    step_seconds: float = 0.0,
) -> tuple[LLMPolicy, ScriptedChat]:
    chat = ScriptedChat(list(script), clock=clock, step_seconds=step_seconds)
    return LLMPolicy(chat, default_prompts(prompts), structured=structured, reasks=reasks), chat


def js(ranking: list[int] | list[str] | None = None, node: str | None = None) -> str:
    """A JSON answer as the default prompt set asks for it."""
    body: dict[str, Any] = {}
    if ranking is not None:
        body["ranking"] = ranking
    if node is not None:
        body["next_node"] = node
    return json.dumps(body)


# ---------------------------------------------------------------------------------------------
# processes and ports


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, stdin: bytes | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CLI, *args], env=env, cwd=cwd, input=stdin, capture_output=True, timeout=timeout)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition` until it holds: an event to wait for instead of a fixed sleep."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the awaited condition never held"
        await asyncio.sleep(0.005)


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# an OpenAI-compatible HTTP server whose answers a test scripts


@dataclass
class FakeLLMServer:
    """Answers /v1/chat/completions from `script` (status, body-or-content, delay_s) in order;
    when the script is empty, answers 200 with `default`. Counts requests and concurrency."""

    script: list[tuple[int, Any, float]] = field(default_factory=list)
    default: str = '{"next_node": "stop"}'
    requests: int = 0
    in_flight: int = 0
    peak: int = 0
    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> Any:
        from aiohttp import web

        async def completions(request: web.Request) -> web.Response:
            body = json.loads(await request.read())
            self.requests += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                status, content, delay = self.script.pop(0) if self.script else (200, self.default, 0)
                if delay:
                    try:
                        await asyncio.wait_for(self.release.wait(), delay)
                    except TimeoutError:
                        pass
                if status != 200:
                    return web.json_response(
                        {"object": "error", "message": str(content), "type": "Error", "code": status},
                        status=status,
                    )
                return web.json_response(
                    {
                        "id": f"chatcmpl-{self.requests}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content},
                            }
                        ],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                    }
                )
            finally:
                self.in_flight -= 1

        async def models(_: web.Request) -> web.Response:
            return web.json_response(
                {
                    "object": "list",
                    "data": [{"id": "test-model", "object": "model", "created": 0, "owned_by": "test"}],
                }
            )

        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        app.router.add_get("/v1/models", models)
        return app


@pytest.fixture
async def llm_server() -> AsyncIterator[FakeLLMServer]:
    """A FakeLLMServer on aiohttp's server in the test's own event loop, on a free port; it
    stops at once (no shutdown poll tick), which keeps the many short HTTP tests short."""
    from aiohttp import web

    fake = FakeLLMServer()
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = runner.addresses[0][1]
    yield fake
    fake.release.set()
    await asyncio.wait_for(runner.cleanup(), 10)
