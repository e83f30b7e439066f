"""Integration: `llm4rerank rerank` as a process against `llm4rerank sim-llm` over HTTP."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from engine_kit import (
    EXAMPLES,
    INVALID,
    SIM_MODEL,
    SimLLM,
    clean_env,
    default_prompts,
    free_port,
    jsonl,
    run_cli,
)

pytestmark = pytest.mark.integration

REQUESTS = [json.loads(line) for line in EXAMPLES.read_text("utf-8").splitlines() if line.strip()]
CANDIDATES = {r["request_id"]: sorted(c["item_id"] for c in r["candidates"]) for r in REQUESTS}
FAULTS = ("--malformed-rate", "0.5", "--error-rate", "0.2", "--rate-limit-rate", "0.1")


def rerank(tmp_path: Path, env: dict[str, str], *extra: str, source: Path = EXAMPLES):
    out, trace = tmp_path / "out.jsonl", tmp_path / "trace.jsonl"
    proc = run_cli(
        "rerank", str(source), "--out", str(out), "--trace", str(trace), *extra, env=env, cwd=tmp_path
    )
    results = jsonl(out.read_bytes()) if out.exists() else []
    steps = jsonl(trace.read_bytes()) if trace.exists() else []
    return proc, results, steps


def by_request(steps: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for step in steps:
        out[step["request_id"]].append(step)
    return out


def check_results(
    results: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    prompt_set: str,
    statuses: tuple[str, ...] = ("ok",),
) -> None:
    assert [r["request_id"] for r in results] == [r["request_id"] for r in REQUESTS]  # input order
    traces = by_request(steps)
    for result in results:
        rid = result["request_id"]
        assert sorted(result["ranking"]) == CANDIDATES[rid], rid
        assert len(set(result["ranking"])) == len(result["ranking"])
        assert result["status"] in statuses, result
        assert result["prompt_version"] == default_prompts(prompt_set).version
        assert result["model"] == SIM_MODEL
        assert result["path"][0] == "accuracy" and result["path"][-1] == "stop"
        trace = traces[rid]
        assert [s["step"] for s in trace] == list(range(1, len(trace) + 1))
        assert [s["node"] for s in trace] == result["path"]
        assert trace[-1]["ranking"] == result["ranking"]
        calls = [c for s in trace for c in s["calls"]]
        assert len(calls) == result["llm_calls"] >= 1
        for call in calls:
            assert call["messages"] and (call["raw"] is not None or call["error"])
        assert result["usage"]["prompt_tokens"] == sum(s["prompt_tokens"] for s in trace) > 0


def test_rerank_examples_against_sim(sim: SimLLM, tmp_path: Path) -> None:
    proc, results, steps = rerank(tmp_path, sim.env())
    assert proc.returncode == 0, proc.stderr.decode()
    check_results(results, steps, "default")
    assert all(r["reason"] is None and r["policy"] == "llm" for r in results)
    assert proc.stderr.decode().strip().splitlines()[-1] == "ok 12, degraded 0, failed 0, invalid 0"
    system = steps[0]["calls"][0]["messages"][0]
    assert system["role"] == "system" and "Candidates (number. score | " in system["content"]
    assert steps[0]["calls"][0]["response_format"]["type"] == "json_schema"
    assert {s["policy"] for s in steps if s["node"] != "stop"} == {"llm"}


@pytest.mark.parametrize(
    ("variables", "prompt_set"),
    [
        ({"LLM4RERANK_PROMPTS": "paper"}, "paper"),
        ({"LLM4RERANK_LLM_STRUCTURED": "none"}, "default"),
        ({"LLM4RERANK_PROMPTS": "paper", "LLM4RERANK_LLM_STRUCTURED": "none"}, "paper"),
    ],
    ids=["paper", "text", "paper-text"],
)
def test_prompt_sets_and_text_mode_end_to_end(
    sim: SimLLM, tmp_path: Path, variables: dict[str, str], prompt_set: str
) -> None:
    proc, results, steps = rerank(tmp_path, sim.env(**variables))
    assert proc.returncode == 0, proc.stderr.decode()
    check_results(results, steps, prompt_set)
    first_call = steps[0]["calls"][0]
    text = "\n".join(m["content"] for m in first_call["messages"])
    if prompt_set == "paper":
        assert "\nItem 1, features: " in text  # items by number: parsing never reads item_ids
    structured = variables.get("LLM4RERANK_LLM_STRUCTURED") != "none"
    assert (first_call["response_format"] is not None) == structured
    if not structured:
        assert all(not c["raw"].lstrip().startswith("{") for s in steps for c in s["calls"])


def test_rerank_with_faults_still_gives_permutations(sim_llm, tmp_path: Path) -> None:
    faulty = sim_llm(*FAULTS)
    proc, results, steps = rerank(tmp_path, faulty.env())
    assert proc.returncode == 0, proc.stderr.decode()
    check_results(results, steps, "default", statuses=("ok", "degraded"))
    notes = [n for s in steps for n in s["notes"]]
    assert any("dropped" in n or "read as" in n or "appended" in n for n in notes), notes
    assert any("unusable" in n for n in notes)
    assert sum(c["retries"] for s in steps for c in s["calls"]) > 0
    stats = faulty.get("/sim/faults")
    assert stats["served"] >= len(REQUESTS)


@pytest.mark.parametrize(
    "variables",
    [{"LLM4RERANK_PROMPTS": "paper"}, {"LLM4RERANK_LLM_STRUCTURED": "none"}],
    ids=["paper", "text"],
)
def test_rerank_with_faults_in_other_modes(sim_llm, tmp_path: Path, variables: dict[str, str]) -> None:
    faulty = sim_llm(*FAULTS)
    proc, results, steps = rerank(tmp_path, faulty.env(**variables))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    prompt_set = variables.get("LLM4RERANK_PROMPTS", "default")
    check_results(results, steps, prompt_set, statuses=("ok", "degraded"))


def test_mixed_valid_and_invalid_lines(sim: SimLLM, tmp_path: Path) -> None:
    valid = EXAMPLES.read_text("utf-8").splitlines()
    invalid = INVALID.read_text("utf-8").splitlines()
    unknown_aspect = json.loads(valid[2])
    unknown_aspect["request_id"] = "bad-aspect"
    unknown_aspect["aspects"]["serendipity"] = {"attribute": "genre"}
    lines = [valid[0], invalid[0], valid[1], "", invalid[1], json.dumps(unknown_aspect), invalid[2], valid[3]]
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe not utf-8\n")
    proc, results, steps = rerank(tmp_path, sim.env(), source=source)
    assert proc.returncode == 1, proc.stderr.decode()
    assert proc.stderr.decode().strip().splitlines()[-1] == "ok 3, degraded 0, failed 0, invalid 5"
    shape = [(r.get("line"), r["status"], r.get("request_id")) for r in results]
    assert shape == [
        (None, "ok", "demo-001"),
        (2, "invalid", "bad-1"),
        (None, "ok", "demo-002"),
        (5, "invalid", None),
        (6, "invalid", "bad-aspect"),
        (7, "invalid", "bad-3"),
        (None, "ok", "demo-004"),
        (9, "invalid", None),
    ]
    errors = {r["line"]: r["error"] for r in results if r["status"] == "invalid"}
    assert errors[2]["code"] == "schema" and "goal" in errors[2]["message"]
    assert errors[5]["code"] == "not_json"
    assert errors[6]["code"] == "unknown_aspect" and "serendipity" in errors[6]["message"]
    assert errors[9]["code"] == "not_utf8"
    assert {s["request_id"] for s in steps} == {"demo-001", "demo-002", "demo-004"}


def test_heuristic_policy_needs_no_endpoint(tmp_path: Path) -> None:
    proc, results, steps = rerank(tmp_path, clean_env(), "--policy", "heuristic")
    assert proc.returncode == 0, proc.stderr.decode()
    assert [r["request_id"] for r in results] == [r["request_id"] for r in REQUESTS]
    for result in results:
        assert sorted(result["ranking"]) == CANDIDATES[result["request_id"]]
        assert (result["status"], result["model"], result["policy"], result["llm_calls"]) == (
            "ok",
            "heuristic",
            "heuristic",
            0,
        )
        assert result["prompt_version"] == "heuristic"
    assert steps and all(s["calls"] == [] for s in steps)


def test_standard_input_and_output(sim: SimLLM, tmp_path: Path) -> None:
    data = EXAMPLES.read_bytes().splitlines()[0] + b"\n"
    proc = run_cli("rerank", "-", env=sim.env(), cwd=tmp_path, stdin=data)
    assert proc.returncode == 0, proc.stderr.decode()
    (result,) = jsonl(proc.stdout)
    assert result["request_id"] == "demo-001" and result["status"] == "ok"


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr.decode())
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert proc.stdout == b""
    return lines[0]


def test_no_llm_url_is_a_usage_error(tmp_path: Path) -> None:
    line = one_line_error(run_cli("rerank", str(EXAMPLES), env=clean_env(), cwd=tmp_path))
    assert "LLM4RERANK_LLM_BASE_URL" in line


def test_unreachable_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    env = clean_env(
        LLM4RERANK_LLM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1", LLM4RERANK_LLM_MODEL=SIM_MODEL
    )
    line = one_line_error(run_cli("rerank", str(EXAMPLES), env=env, cwd=tmp_path))
    assert "unreachable" in line and "LLM4RERANK_LLM_BASE_URL" in line


def test_wrong_model_is_a_usage_error(sim: SimLLM, tmp_path: Path) -> None:
    env = sim.env()
    env["LLM4RERANK_LLM_MODEL"] = "meta-llama/Llama-2-13b-chat-hf"
    line = one_line_error(run_cli("rerank", str(EXAMPLES), env=env, cwd=tmp_path))
    assert "LLM4RERANK_LLM_MODEL" in line and SIM_MODEL in line


@pytest.mark.parametrize(
    ("variables", "names"),
    [
        ({"LLM4RERANK_PROMPTS": "nope"}, "LLM4RERANK_PROMPTS"),
        ({"LLM4RERANK_MAX_STEPS": "many"}, "LLM4RERANK_MAX_STEPS"),
        ({"LLM4RERANK_LLM_STRUCTURED": "yaml"}, "LLM4RERANK_LLM_STRUCTURED"),
    ],
)
def test_bad_settings_are_usage_errors(
    sim: SimLLM, tmp_path: Path, variables: dict[str, str], names: str
) -> None:
    line = one_line_error(run_cli("rerank", str(EXAMPLES), env=sim.env(**variables), cwd=tmp_path))
    assert names in line


def test_missing_input_file_is_a_usage_error(sim: SimLLM, tmp_path: Path) -> None:
    line = one_line_error(run_cli("rerank", str(tmp_path / "nope.jsonl"), env=sim.env(), cwd=tmp_path))
    assert "no such file" in line
