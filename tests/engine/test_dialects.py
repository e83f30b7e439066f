"""Each answer format against the SIMULATED server speaking each real server's dialect: the
startup check refuses a format the server refuses (naming the setting), a refused request is
not retried, and an accepted format gives walks on the model's answers. Also seeded Backward."""

from __future__ import annotations

import json

import orjson
import pytest
from engine_kit import SIM_MODEL, FakeLLMServer, example_requests, jsonl, run_cli

from worker.config import Settings
from worker.errors import ConfigError
from worker.policies.chat import OpenAIChat
from worker.policies.formats import probe_format
from worker.service import Reranker
from worker.simllm.dialects import check_format

ACCEPTS = {  # dialect -> the modes it takes (the rest it refuses)
    "vllm": {"json_schema", "tgi", "json_object", "none"},
    "tgi": {"tgi", "none"},
    "llama-cpp-python": {"tgi", "json_object", "none"},
    "llama.cpp": {"json_schema", "tgi", "json_object", "none"},
}
MODES = ("json_schema", "tgi", "json_object", "none")


@pytest.mark.parametrize("dialect", sorted(ACCEPTS))
@pytest.mark.parametrize("mode", MODES)
def test_dialect_table(dialect: str, mode: str) -> None:
    refused = check_format(dialect, probe_format(mode))
    assert (refused is None) == (mode in ACCEPTS[dialect])
    if dialect == "llama-cpp-python" and refused:
        assert refused[0] == 500 and "Input should be" in json.dumps(refused[1])


@pytest.mark.parametrize("dialect", sorted(ACCEPTS))
async def test_startup_check_and_walks_per_dialect(sim_llm, dialect: str) -> None:
    sim = sim_llm("--dialect", dialect)
    request = example_requests()[0]
    for mode, shape in [(m, "list") for m in MODES] + [("json_schema", "keys")]:
        settings = Settings(
            llm_base_url=sim.base_url,
            llm_model=SIM_MODEL,
            llm_structured=mode,
            llm_answer_shape=shape,
            llm_retry_max_wait_s=0.05,
        )
        chat = OpenAIChat(settings)
        try:
            if mode not in ACCEPTS[dialect]:
                with pytest.raises(ConfigError, match="LLM4RERANK_LLM_STRUCTURED"):
                    await chat.check()
                continue
            await chat.check()
            assert chat.context_tokens == (8192 if dialect == "vllm" else None)
            result, outcome = await Reranker(settings, chat).run(request)
        finally:
            await chat.close()
        assert result.status == "ok" and result.policy == "llm", (mode, result.reason)
        assert result.repair is not None and result.repair.permutations == result.repair.answers
        calls = [c for s in outcome.steps for c in s.calls]
        assert all(c.error is None and c.finish_reason == "stop" and c.model == SIM_MODEL for c in calls)
        if shape == "keys":
            keyed = [c for c in calls if "positions" in str(c.response_format)]
            assert keyed and all('"positions"' in (c.raw or "") for c in keyed)


def test_the_cli_refuses_to_start_on_a_refused_format(sim_llm, tmp_path) -> None:
    sim = sim_llm("--dialect", "tgi")
    done = run_cli(
        "rerank", "-", env=sim.env(LLM4RERANK_LLM_STRUCTURED="json_schema"), cwd=tmp_path, stdin=b""
    )
    assert done.returncode != 0
    assert b"LLM4RERANK_LLM_STRUCTURED" in done.stderr and b"422" in done.stderr


async def test_a_500_validation_error_is_not_retried(llm_server: FakeLLMServer) -> None:
    llm_server.script = [
        (
            500,
            "1 validation error for CreateChatCompletionRequest: "
            "response_format.type: Input should be 'text' or 'json_object'",
            0,
        )
    ]
    chat = OpenAIChat(
        Settings(llm_base_url=llm_server.base_url, llm_model="test-model", llm_retry_max_wait_s=0.05)
    )
    try:
        call = await chat.complete([{"role": "user", "content": "u"}], probe_format("json_schema"), 1e18)
    finally:
        await chat.close()
    assert llm_server.requests == 1 and call.retries == 0
    assert call.raw is None and call.error and call.error.startswith("HTTP 500")


def test_seeded_backward_from_the_sim_gives_no_repeated_prompt(sim_llm, tmp_path) -> None:
    lines = b"".join(
        line + b"\n" for line in (orjson.dumps(r.model_dump(mode="json")) for r in example_requests()[:6])
    )
    trace = tmp_path / "trace.jsonl"
    runs = [
        run_cli(
            "rerank",
            "-",
            "--trace",
            str(trace),  # two fresh sims with one seed
            env=sim_llm("--backward-rate", "0.6", seed=4).env(LLM4RERANK_MAX_STEPS="8"),
            cwd=tmp_path,
            stdin=lines,
        )
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    first, second = (jsonl(r.stdout) for r in runs)
    assert [r["path"] for r in first] == [r["path"] for r in second]  # seeded
    assert any("backward" in r["path"] for r in first)
    prompts: dict[str, list[str]] = {}
    for step in jsonl(trace.read_bytes())[: sum(len(r["path"]) for r in first)]:
        if step.get("calls"):
            prompts.setdefault(step["request_id"], []).append(
                orjson.dumps(step["calls"][0]["messages"]).decode()
            )
    for request_prompts in prompts.values():
        assert len(request_prompts) == len(set(request_prompts))
    for step in jsonl(trace.read_bytes()):
        if step["node"] == "backward" and step["removed"]:
            assert step["offered"] and step["next_node"] in step["offered"]
