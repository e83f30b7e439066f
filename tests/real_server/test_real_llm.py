"""Against a REAL third-party server: llama.cpp's own HTTP server (xllamacpp) serving a tiny
random-weight Llama GGUF (see tests/real_server_kit.py). Random weights give garbage text and
grammar-valid JSON: these tests check protocol, structure, repair, context limits and what the
trace records, offline and through Kafka. Bounded: small lists, few steps, one slot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stream"))
from real_server_kit import MODEL_ID, tokenizer_file
from service_kit import CLI
from stream_helpers import collect, full_calls, produce, query

from worker.samples import sample_requests

pytestmark = pytest.mark.integration

CONTEXT = 2048  # the server's one slot


def llm_env(server: Any, mode: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "LLM4RERANK_LLM_BASE_URL": server.base_url,
        "LLM4RERANK_LLM_MODEL": MODEL_ID,
        "LLM4RERANK_LLM_STRUCTURED": mode,
        "LLM4RERANK_LLM_TOKENIZER": str(tokenizer_file()),
        "LLM4RERANK_LLM_CONTEXT_TOKENS": str(server.context_per_slot),
        # random weights never rank well: take every answer the grammar lets through, so the
        # walk runs on the model's structured answers (the default threshold is measured in
        # benchmarks/real_server_bench.py)
        "LLM4RERANK_LLM_MAX_REPAIR_SHARE": "1",
        "LLM4RERANK_MAX_STEPS": "4",
        "LLM4RERANK_DEADLINE_MS": "120000",
        **extra,
    }


def rerank(
    tmp_path: Path, env: dict[str, str], requests: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    source = tmp_path / "requests.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in requests))
    out, trace = tmp_path / "results.jsonl", tmp_path / "trace.jsonl"
    done = subprocess.run(
        [CLI, "rerank", str(source), "--out", str(out), "--trace", str(trace), "--concurrency", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    steps = [json.loads(line) for line in trace.read_text().splitlines()]
    return results, steps


def check_calls(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Zero protocol errors: every call answered, with the server's finish_reason and model id,
    and prompt plus answer within the context."""
    calls = [c for s in steps for c in s.get("calls") or []]
    assert calls
    for call in calls:
        assert call["error"] is None and call["raw"] is not None, call["error"]
        assert call["finish_reason"] in ("stop", "length")
        assert call["model"] == MODEL_ID
        assert call["cached_tokens"] is not None
        assert call["prompt_tokens"] + call["completion_tokens"] <= CONTEXT
        # counted before sending with the model's tokenizer: never below what the server counted
        assert call["counted_tokens"] >= call["prompt_tokens"]
        assert call["completion_tokens"] <= call["max_tokens"]
    return calls


@pytest.mark.parametrize("mode", ["json_schema", "json_object"])
def test_offline_walks_use_the_servers_structured_answers(llama_server, tmp_path, mode) -> None:
    requests = sample_requests(2, seed=7, prefix=f"real-{mode}", candidates=8)
    results, steps = rerank(tmp_path, llm_env(llama_server, mode), requests)
    calls = check_calls(steps)
    assert all(
        c["response_format"]["type"] == ("json_schema" if mode == "json_schema" else "json_object")
        for c in calls
    )
    for request, result in zip(requests, results, strict=True):
        assert sorted(result["ranking"]) == sorted(c["item_id"] for c in request["candidates"])
        assert result["policy"] == "llm" and result["status"] == "ok", result["reason"]
        assert result["repair"]["answers"] >= 1
    aspect_steps = [s for s in steps if s["node"] not in ("backward", "stop")]
    assert aspect_steps and all(s["policy"] == "llm" and s["ranking"] for s in aspect_steps)
    assert all(s["repair"] is not None for s in aspect_steps)
    # later steps of a session find the session's prefix in the server's cache
    later = [c for s in steps if s["step"] > 1 for c in s.get("calls") or []]
    assert any((c["cached_tokens"] or 0) > 0 for c in later)


def test_no_prompt_is_asked_twice_in_a_walk(llama_server, tmp_path) -> None:
    """At temperature 0 the same prompt gets the same answer: a repeated prompt is a loop."""
    requests = sample_requests(3, seed=11, prefix="real-loop", candidates=6)
    results, steps = rerank(
        tmp_path, llm_env(llama_server, "json_schema", LLM4RERANK_MAX_STEPS="8"), requests
    )
    check_calls(steps)
    by_request: dict[str, list[str]] = {}
    for step in steps:
        if step.get("calls"):
            by_request.setdefault(step["request_id"], []).append(
                orjson.dumps(step["calls"][0]["messages"]).decode()
            )
    assert set(by_request) == {r["request_id"] for r in requests}
    for prompts in by_request.values():
        assert len(prompts) == len(set(prompts))
    backward_steps = 0
    for request in requests:  # Backward never goes back to a node whose list it withdrew
        pool: list[str] = []
        undone: set[str] = set()
        for step in (s for s in steps if s["request_id"] == request["request_id"]):
            if step["node"] == "backward":
                backward_steps += 1
                if pool:
                    undone.add(pool.pop())
                assert step["next_node"] not in undone, step
            elif step["ranking"] and step["node"] != "stop":
                pool.append(step["node"])
    assert backward_steps  # the random model does choose Backward
    assert all(r["path"][-1] == "stop" for r in results)


def test_a_hundred_candidates_are_reranked_in_windows_within_the_context(llama_server, tmp_path) -> None:
    request = sample_requests(1, seed=5, prefix="real-100", candidates=100)[0]
    env = llm_env(llama_server, "json_schema", LLM4RERANK_MAX_STEPS="1")
    results, steps = rerank(tmp_path, env, [request])
    calls = check_calls(steps)
    (result,) = results
    assert sorted(result["ranking"]) == sorted(c["item_id"] for c in request["candidates"])
    first = steps[0]
    windows = [c["window"] for c in first["calls"]]
    assert len(windows) >= 9 and all(w is not None and w[1] - w[0] + 1 <= 20 for w in windows)
    assert windows[0][1] == 100 and windows[-1][0] == 1  # bottom to top, as RankGPT slides
    assert any("windows of 20" in note for note in first["notes"])
    assert max(c["prompt_tokens"] for c in calls) < CONTEXT
    assert result["policy"] == "llm"


async def test_worker_through_kafka_records_what_the_server_did(
    llama_server, stream_env, start_worker, tmp_path
) -> None:
    env = {
        **stream_env,
        **{
            k: v
            for k, v in llm_env(llama_server, "json_schema").items()
            if k.startswith("LLM4RERANK_LLM") or k in ("LLM4RERANK_MAX_STEPS", "LLM4RERANK_DEADLINE_MS")
        },
        "LLM4RERANK_CONCURRENCY": "1",
    }
    worker = start_worker(env)
    requests = sample_requests(2, seed=3, prefix="real-kafka", candidates=8)
    bootstrap = env["LLM4RERANK_KAFKA_BOOTSTRAP"]
    await produce(bootstrap, env["LLM4RERANK_REQUEST_TOPIC"], [orjson.dumps(r) for r in requests])
    results = await collect(bootstrap, env["LLM4RERANK_RESULT_TOPIC"], until=2, timeout_s=180)
    assert worker.alive(), worker.log.read_text()[-2000:]
    by_id = {key: value for key, value in results}
    assert set(by_id) == {r["request_id"] for r in requests}
    assert all(r["policy"] == "llm" and r["model"] == MODEL_ID for r in by_id.values())
    rows = await full_calls(
        env["LLM4RERANK_DATABASE_URL"],
        await query(
            env["LLM4RERANK_DATABASE_URL"],
            "select s.node, s.calls from steps s join sessions x on x.id = s.session_id "
            "where x.request_id like 'real-kafka-%'",
        ),
    )
    check_calls([{"calls": r["calls"]} for r in rows if r["calls"]])
