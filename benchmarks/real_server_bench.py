"""Against a REAL llama.cpp server (the xllamacpp wheel) serving the tiny RANDOM-weight Llama GGUF
of tests/real_server_kit.py: what the service does with a real server's answers.

For each answer shape (`list`, `keys`) in `json_schema` mode, with the default repair threshold
(LLM4RERANK_LLM_MAX_REPAIR_SHARE), on seeded requests of 20 candidates, and on one request of
100 candidates (sliding windows):
- the share of ranking answers that were already a permutation before repair,
- the share of results ok / degraded, and the policy that produced them,
- prompt and completion tokens per request,
- the share of prompt tokens the server served from its prefix cache, per step number.

Random weights rank nothing: the permutation share measures what the grammar and the answer
shape enforce, not ranking quality. One slot and temperature 0, so runs repeat.

Usage: .venv/bin/python benchmarks/real_server_bench.py [--requests 6] [--candidates 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from real_server_kit import MODEL_ID, LlamaServer, build_gguf, tokenizer_file

from worker.samples import sample_requests


async def run_shape(
    base_url: str, context: int, shape: str, requests: list[Any], max_steps: int, max_repair_share: float
) -> dict[str, Any]:
    from worker.config import Settings
    from worker.policies.chat import OpenAIChat
    from worker.service import Reranker

    settings = Settings(
        llm_base_url=base_url,
        llm_model=MODEL_ID,
        llm_structured="json_schema",
        llm_answer_shape=shape,
        llm_tokenizer=tokenizer_file(),
        llm_context_tokens=context,
        max_steps=max_steps,
        deadline_ms=600_000,
        aspects={},
        llm_max_repair_share=max_repair_share,
    )
    chat = OpenAIChat(settings)
    await chat.check()
    reranker = Reranker(settings, chat)
    answers = permutations = 0
    repaired: dict[str, int] = defaultdict(int)
    status: dict[str, int] = defaultdict(int)
    tokens: list[tuple[int, int]] = []
    cached: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    finish: dict[str, int] = defaultdict(int)
    windows = 0
    started = time.monotonic()
    try:
        for request in requests:
            result, outcome = await reranker.run(request)
            status[f"{result.status} ({result.policy})"] += 1
            tokens.append((result.usage.prompt_tokens, result.usage.completion_tokens))
            if result.repair is not None:
                answers += result.repair.answers
                permutations += result.repair.permutations
                for key in ("appended", "duplicates", "unknown", "ties"):
                    repaired[key] += getattr(result.repair, key)
            for step in outcome.steps:
                for call in step.calls:
                    if call.raw is not None:
                        finish[call.finish_reason or "none"] += 1
                        cached[step.step][0] += call.cached_tokens or 0
                        cached[step.step][1] += call.prompt_tokens
                        windows += call.window is not None
    finally:
        await chat.close()
    n = len(requests)
    return {
        "shape": shape,
        "max_repair_share": max_repair_share,
        "requests": n,
        "candidates": len(requests[0].candidates),
        "answers": answers,
        "permutation_share_before_repair": round(permutations / answers, 3) if answers else None,
        "repaired_items": dict(repaired),
        "results": {k: f"{v}/{n}" for k, v in sorted(status.items())},
        "prompt_tokens_per_request": round(sum(p for p, _ in tokens) / n, 1),
        "completion_tokens_per_request": round(sum(c for _, c in tokens) / n, 1),
        "cached_share_by_step": {k: round(c / p, 3) if p else None for k, (c, p) in sorted(cached.items())},
        "finish_reasons": dict(finish),
        "window_calls": windows,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument(
        "--max-repair-share",
        type=float,
        action="append",
        help="repeatable; default: 0.2 (the setting's default) and 1 (take every "
        "grammar-valid answer, so walks go on and later steps show caching)",
    )
    args = parser.parse_args()
    from worker.schemas import parse_request

    def fresh(count: int, candidates: int) -> list[Any]:
        """New requests for every run, so no run finds another's prompts in the server's cache."""
        fresh.seed += 1
        return [
            parse_request(json.dumps(r))
            for r in sample_requests(
                count, seed=fresh.seed, prefix=f"real{fresh.seed}-", candidates=candidates
            )
        ]

    fresh.seed = 2406  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_gguf(Path(tmp) / "tiny.gguf")
        server = LlamaServer(model, n_ctx=args.n_ctx, n_parallel=1, log=Path(tmp) / "server.log")
        server.start()
        try:
            rows = []
            for share in args.max_repair_share or [0.2, 1.0]:
                for shape in ("list", "keys"):
                    rows.append(
                        asyncio.run(
                            run_shape(
                                server.base_url,
                                server.context_per_slot,
                                shape,
                                fresh(args.requests, args.candidates),
                                args.max_steps,
                                share,
                            )
                        )
                    )
                rows.append(
                    asyncio.run(
                        run_shape(server.base_url, server.context_per_slot, "list", fresh(1, 100), 1, share)
                    )
                )
        finally:
            server.stop()
    print(
        f"real llama.cpp server (xllamacpp), tiny RANDOM-weight model, json_schema, "
        f"context {args.n_ctx} tokens, temperature 0, one slot"
    )
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
