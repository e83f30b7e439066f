"""One prompt per request: the Kafka worker and the offline `rerank` send byte-identical prompts
for the same request (sim-llm logs a hash of every prompt it receives), and in every prompt set and
answer mode an answer is parsed without reading item_ids."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import orjson
import pytest
from hostile_cases import ODD_IDS, base
from service_kit import CLI, SIM_MODEL
from stream_helpers import collect, produce

from worker.samples import sample_requests

pytestmark = pytest.mark.integration


def hashes(log: Path) -> list[str]:
    return [orjson.loads(line)["prompt"] for line in log.read_bytes().splitlines() if line.strip()]


def request_in_its_own_key_order() -> bytes:
    """Feature keys in an order JSONB would change (it sorts shorter keys first)."""
    body = sample_requests(1, seed=21, prefix="same")[0]
    for c in body["candidates"]:
        c["features"] = {
            "title": c["features"]["title"],
            "genre": c["features"]["genre"],
            "year": c["features"]["year"],
        }
    body["user"]["features"] = {"gender": "F", "age": 25}
    return orjson.dumps(body)


async def test_worker_and_offline_rerank_send_identical_prompts(sim_llm, stream_env, start_worker, tmp_path):
    log = tmp_path / "calls.jsonl"
    sim = sim_llm("--seed", "5", "--call-log", str(log))
    env = {**stream_env, "LLM4RERANK_LLM_BASE_URL": sim.base_url}
    start_worker(env)
    raw = request_in_its_own_key_order()
    await produce(env["LLM4RERANK_KAFKA_BOOTSTRAP"], env["LLM4RERANK_REQUEST_TOPIC"], [raw])
    results = await collect(env["LLM4RERANK_KAFKA_BOOTSTRAP"], env["LLM4RERANK_RESULT_TOPIC"], 1, 90)
    assert len(results) == 1 and results[0][1]["status"] == "ok"
    logged = hashes(log)
    calls = results[0][1]["llm_calls"]
    assert calls >= 2 and len(logged) in (calls, calls + 1)  # + the worker's startup format probe
    through_kafka = logged[-calls:]

    source = tmp_path / "one.jsonl"
    source.write_bytes(raw + b"\n")
    offline = await asyncio.to_thread(
        subprocess.run,
        [CLI, "rerank", str(source), "--out", str(tmp_path / "out.jsonl")],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert offline.returncode == 0, offline.stderr[-2000:]
    offline_calls = hashes(log)[len(logged) :]
    assert offline_calls[-calls:] == through_kafka and len(offline_calls) in (calls, calls + 1)
    assert orjson.loads((tmp_path / "out.jsonl").read_bytes())["ranking"] == results[0][1]["ranking"]


@pytest.mark.parametrize(
    ("prompts", "structured"), [("paper", "none"), ("paper", "json_schema"), ("default", "none")]
)
def test_item_ids_of_any_characters_are_parsed(sim_llm, tmp_path, prompts, structured):
    """Ids with spaces, commas, semicolons, brackets, quotes, parentheses or digits only: answers
    name items by number in every prompt set, so every answer is used (policy llm, status ok)."""
    sim = sim_llm("--seed", "6")
    body = base("odd", n=len(ODD_IDS))
    for c, item_id in zip(body["candidates"], ODD_IDS, strict=True):
        c["item_id"] = item_id
    source = tmp_path / "odd.jsonl"
    source.write_bytes(orjson.dumps(body) + b"\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "LLM4RERANK_LLM_BASE_URL": sim.base_url,
        "LLM4RERANK_LLM_MODEL": SIM_MODEL,
        "LLM4RERANK_PROMPTS": prompts,
        "LLM4RERANK_LLM_STRUCTURED": structured,
    }
    done = subprocess.run(
        [
            CLI,
            "rerank",
            str(source),
            "--out",
            str(tmp_path / "out.jsonl"),
            "--trace",
            str(tmp_path / "trace.jsonl"),
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = orjson.loads((tmp_path / "out.jsonl").read_bytes())
    assert result["status"] == "ok" and result["policy"] == "llm", result
    assert sorted(result["ranking"]) == sorted(ODD_IDS)
    steps = [orjson.loads(line) for line in (tmp_path / "trace.jsonl").read_bytes().splitlines()]
    assert steps and all(s["problem"] is None for s in steps)
    assert not any("unknown id" in n for s in steps for n in s["notes"])
