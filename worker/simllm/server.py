"""`llm4rerank sim-llm`: a SIMULATED OpenAI-compatible chat server (vLLM's routes), for
development and tests only. It answers with the heuristic policy, never with a model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..engine.nodes import BACKWARD
from ..engine.steps import NodeAsk
from ..policies.heuristic import HeuristicPolicy
from . import SIMULATED_MODEL
from .dialects import check_format, enforced_schema, wants_json
from .faults import Dice, Faults, inject, malform
from .reader import PromptReader, UnreadablePrompt, load_readers

_TOKEN = re.compile(r"\w+|[^\w\s]")
SIM_MAX_MODEL_LEN = 8192


def count_tokens(text: str) -> int:
    """Approximate token count (words and punctuation); a simulation, not a tokenizer."""
    return len(_TOKEN.findall(text))


class SimState:
    def __init__(
        self,
        prompts_dir: Path,
        faults: Faults,
        seed: int,
        max_concurrent: int,
        model: str = SIMULATED_MODEL,
        call_log: Path | None = None,
        dialect: str = "vllm",
    ) -> None:
        self.dialect = dialect
        self.readers = load_readers(prompts_dir)
        self.faults = faults
        self.dice = Dice(seed)
        self.slots = asyncio.Semaphore(max_concurrent)
        self.model = model
        self.served = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.policy = HeuristicPolicy()
        self.call_log = open(call_log, "ab", buffering=0) if call_log else None

    def log_call(self, prompt: str) -> None:
        """One line per call received: when, and a hash of exactly what was sent."""
        if self.call_log is not None:
            digest = hashlib.sha256(prompt.encode()).hexdigest()
            self.call_log.write(orjson.dumps({"t": time.time(), "prompt": digest}) + b"\n")

    def read(self, messages: list[dict[str, Any]]) -> tuple[NodeAsk, PromptReader]:
        problems = []
        for reader in self.readers:
            try:
                ask = reader.read(messages)
                return ask, reader
            except (UnreadablePrompt, KeyError, ValueError) as exc:
                problems.append(f"{reader.prompts.name}: {exc}")
        raise UnreadablePrompt("; ".join(problems))


def _ascii_json(body: dict[str, Any]) -> Response:
    """JSON with every non-ASCII character escaped: an answer may hold lone surrogates."""
    return Response(json.dumps(body, ensure_ascii=True), media_type="application/json")


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(
        {"object": "error", "message": message, "type": kind, "code": status}, status_code=status
    )


def create_app(state: SimState) -> Starlette:
    async def models(_: Request) -> Response:
        model: dict[str, Any] = {
            "id": state.model,
            "object": "model",
            "created": 0,
            "owned_by": "sim-llm (simulated)",
        }
        if state.dialect == "vllm":
            model["max_model_len"] = SIM_MAX_MODEL_LEN  # as vLLM reports its context length
        return JSONResponse({"object": "list", "data": [model]})

    async def completions(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            messages = body["messages"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _error(400, "body must be JSON with messages", "BadRequestError")
        if body.get("model") != state.model:
            return _error(
                404,
                f"The model `{body.get('model')}` does not exist; this simulated "
                f"server serves `{state.model}`.",
                "NotFoundError",
            )
        fmt = body.get("response_format")
        refused = check_format(state.dialect, fmt)
        if refused is not None:
            return JSONResponse(refused[1], status_code=refused[0])
        prompt = orjson.dumps(messages).decode()
        state.log_call(prompt)
        rng = state.dice.for_prompt(prompt)
        f = state.faults
        async with state.slots:
            state.in_flight += 1
            state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
            try:
                delay = f.latency_ms + (rng.uniform(-1, 1) * f.latency_jitter_ms)
                if delay > 0:
                    await asyncio.sleep(delay / 1000)
                roll = rng.random()
                if roll < f.rate_limit_rate:
                    return _error(429, "simulated rate limit", "RateLimitError")
                if roll < f.rate_limit_rate + f.error_rate:
                    return _error(500, "simulated server error", "InternalServerError")
                if rng.random() < f.timeout_rate:
                    await asyncio.sleep(f.timeout_s)
                    return _error(504, "simulated timeout", "Timeout")
                schema = enforced_schema(state.dialect, fmt)
                try:
                    ask, reader = state.read(messages)
                except UnreadablePrompt as exc:
                    if not wants_json(fmt):
                        return _error(400, f"sim-llm could not read this prompt: {exc}", "BadRequestError")
                    ask, reader = None, None  # e.g. a startup probe: answer the schema minimally
                if ask is None or reader is None:
                    content = orjson.dumps(minimal_instance(schema or {"type": "object"})).decode()
                else:
                    answer = state.policy.answer_now(ask)
                    next_node = answer.next_node
                    if (
                        answer.ranking is not None
                        and BACKWARD in ask.offered
                        and f.backward_rate > 0
                        and rng.random() < f.backward_rate
                    ):
                        next_node = BACKWARD
                    keys = bool(schema) and "positions" in (schema or {}).get("properties", {})
                    content = render_answer(answer.ranking, next_node, wants_json(fmt), reader, keys=keys)
                if rng.random() < f.malformed_rate:
                    content = malform(content, rng)
                if f.inject_rate and rng.random() < f.inject_rate:
                    content = inject(content, f, rng)
                state.served += 1
            finally:
                state.in_flight -= 1
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages)
        return _ascii_json(
            {
                "id": f"chatcmpl-sim-{uuid.uuid4().hex[:16]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": state.model,
                "system_fingerprint": "sim-llm-simulated",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "logprobs": None,
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": count_tokens(content),
                    "total_tokens": prompt_tokens + count_tokens(content),
                    "prompt_tokens_details": {"cached_tokens": 0},
                },
            }
        )

    async def faults(request: Request) -> Response:
        """Change faults at run time (tests make the endpoint fail, then recover)."""
        if request.method == "POST":
            update = json.loads(await request.body())  # inject_texts may hold lone surrogates
            state.faults = Faults.model_validate({**state.faults.model_dump(), **update})
        return _ascii_json(
            {**state.faults.model_dump(), "served": state.served, "peak_in_flight": state.peak_in_flight}
        )

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "simulated": True})

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/sim/faults", faults, methods=["GET", "POST"]),
            Route("/health", health),
        ]
    )


def render_answer(
    ranking: list[str] | None,
    next_node: str | None,
    structured: bool,
    reader: PromptReader,
    keys: bool = False,
) -> str:
    aliases = reader.prompts.uses_aliases
    if structured:
        body: dict[str, Any] = {}
        if ranking is not None and keys:
            body["positions"] = {r: i + 1 for i, r in enumerate(ranking)}
        elif ranking is not None:
            body["ranking"] = [int(r) if aliases else r for r in ranking]
        body["next_node"] = next_node
        return orjson.dumps(body).decode()
    if ranking is None:
        return str(next_node)
    return "[" + ", ".join(ranking) + f"]; {next_node}"


def minimal_instance(schema: dict[str, Any]) -> Any:
    """The first value a schema allows: what a grammar-constrained server could answer."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: minimal_instance(props.get(k, {})) for k in schema.get("required", [])}
    if kind == "array":
        item = schema.get("items", {})
        count = schema.get("minItems", 0)
        if item.get("type") == "integer" and count <= item.get("maximum", count):
            return list(range(item.get("minimum", 1), item.get("minimum", 1) + count))
        return [minimal_instance(item) for _ in range(count)]
    if kind == "integer":
        return schema.get("minimum", 0)
    return ""
