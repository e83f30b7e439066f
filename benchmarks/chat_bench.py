"""CPU per LLM call on the client side, layer by layer: how much of the 1.5 ms per node step the
chat call alone takes (one call per step).

A local aiohttp server (its own process, so its CPU is not counted) answers every
/v1/chat/completions at once with a fixed completion; the client sends N calls, `--in-flight` at
a time, with a prompt of the size a 20-candidate walk sends, and prints its own process CPU per
call for:

1. the product's call, `OpenAIChat.complete`: the openai client on its aiohttp transport, with our
   tenacity retries, breaker, deadline and the call's record;
2. the openai client's `post` alone, as the product sends it (the same transport);
3. aiohttp's own `ClientSession.post`, the transport under the client: the floor.

Usage: .venv/bin/python benchmarks/chat_bench.py [--calls 3000] [--in-flight 32]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from service_kit import free_port, wait_http  # noqa: E402

TARGET_CPU_MS = 1.5
ANSWER = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '{"ranking": [3, 1, 2], "next_node": "stop"}'},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940},
    }
)


def serve(port: int) -> None:
    from aiohttp import web

    async def completions(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def messages() -> list[dict[str, str]]:
    system = "You rerank candidates.\n" + "\n".join(
        f"[{i}] item-{i} | category news | score 0.{i}" for i in range(20)
    )
    return [{"role": "system", "content": system * 3}, {"role": "user", "content": "Node: accuracy. " * 20}]


async def cpu_per_call(send: Callable[[], Awaitable[object]], calls: int, in_flight: int) -> float:
    for _ in range(50):  # warm: connections open, caches filled
        await send()
    left = calls

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await send()

    started = time.process_time()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return (time.process_time() - started) * 1000 / calls


async def run(port: int, calls: int, in_flight: int) -> dict[str, float]:
    import aiohttp
    import openai

    from worker.config import Settings
    from worker.policies.chat import OpenAIChat

    base = f"http://127.0.0.1:{port}/v1"
    msgs = messages()
    body = orjson.dumps({"model": "bench", "messages": msgs, "temperature": 0, "max_tokens": 200})
    out: dict[str, float] = {}

    settings = Settings(llm_base_url=base, llm_model="bench", llm_max_inflight=in_flight)
    chat = OpenAIChat(settings)
    out["OpenAIChat.complete (product)"] = await cpu_per_call(
        lambda: chat.complete(msgs, None, time.monotonic() + 30), calls, in_flight
    )
    await chat.close()

    client = openai.AsyncOpenAI(
        base_url=base, api_key="EMPTY", max_retries=0, http_client=openai.DefaultAioHttpClient(timeout=30)
    )
    out["openai AsyncOpenAI.post (aiohttp transport)"] = await cpu_per_call(
        lambda: client.post("/chat/completions", cast_to=httpx.Response, content=body), calls, in_flight
    )
    await client.close()

    async with aiohttp.ClientSession() as session:

        async def raw() -> bytes:
            async with session.post(
                f"{base}/chat/completions", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                return await response.read()

        out["aiohttp ClientSession.post (the transport)"] = await cpu_per_call(raw, calls, in_flight)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc=server)
        results = asyncio.run(run(port, args.calls, args.in_flight))
    finally:
        server.terminate()
        server.wait(10)
    print(f"client CPU per chat call, {args.calls} calls, {args.in_flight} in flight (target per node step: "
          f"<= {TARGET_CPU_MS} ms for everything):")  # fmt: skip
    for name, ms in results.items():
        print(f"  {ms:6.3f} ms  ({100 * ms / TARGET_CPU_MS:4.0f}% of the step target)  {name}")


if __name__ == "__main__":
    main()
