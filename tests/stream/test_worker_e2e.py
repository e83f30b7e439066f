"""End to end through real Kafka, PostgreSQL and sim-llm over HTTP: valid requests give one result
each, invalid ones one dead letter each, and every step is stored."""

from __future__ import annotations

import urllib.request

import orjson
from service_kit import CLI, SIM_MODEL
from stream_helpers import collect, full_calls, make_requests, produce, query

from worker.schemas import RerankResult


async def test_results_dead_letters_and_stored_steps(sim_llm, stream_env, start_worker):
    sim = sim_llm("--seed", "3", "--latency-ms", "5", "--malformed-rate", "0.2")
    env = {**stream_env, "LLM4RERANK_LLM_BASE_URL": sim.base_url}
    start_worker(env)
    valid = make_requests(30, seed=1, prefix="e2e")
    invalid = [
        b"{not json",
        b"\xff\xfe\x00binary",
        orjson.dumps(
            {
                "request_id": "bad-few",
                "goal": "Focus on accuracy",
                "user": {"user_id": "u"},
                "candidates": [{"item_id": "a"}],
            }
        ),
        orjson.dumps({**valid[0], "request_id": "bad-extra", "surprise": 1}),
        orjson.dumps(
            {**valid[0], "request_id": "bad-aspect", "aspects": {"diversity": {"attribute": "colour"}}}
        ),
    ]
    messages = [orjson.dumps(r) for r in valid] + invalid
    bootstrap = env["LLM4RERANK_KAFKA_BOOTSTRAP"]
    await produce(bootstrap, env["LLM4RERANK_REQUEST_TOPIC"], messages)

    results = await collect(bootstrap, env["LLM4RERANK_RESULT_TOPIC"], until=30, timeout_s=120)
    dead = await collect(bootstrap, env["LLM4RERANK_DLQ_TOPIC"], until=5, timeout_s=30)

    by_id = {key: RerankResult.model_validate(value) for key, value in results}
    assert set(by_id) == {r["request_id"] for r in valid}
    for request in valid:
        result = by_id[request["request_id"]]
        assert sorted(result.ranking) == sorted(c["item_id"] for c in request["candidates"])
        assert result.path[0] == "accuracy" and result.path[-1] == "stop"
        assert result.model == SIM_MODEL and result.prompt_version.startswith("default-")

    assert len(dead) == 5
    codes = sorted(d["error"]["code"] for _, d in dead)
    assert codes == ["not_json", "not_utf8", "schema", "schema", "schema"]
    binary = next(d for _, d in dead if d["error"]["code"] == "not_utf8")
    assert binary["payload_encoding"] == "base64" and binary["source"]["offset"] is not None
    aspect = next(d for _, d in dead if d.get("request_id") == "bad-aspect")
    assert "aspects.diversity.attribute" in aspect["error"]["message"]

    url = env["LLM4RERANK_DATABASE_URL"]
    sessions = await query(
        url, "select request_id, status, path, llm_calls from sessions where request_id like 'e2e-%'"
    )
    assert len(sessions) == 30 and all(s["status"] in ("ok", "degraded") for s in sessions)
    for session in sessions:
        steps = await full_calls(
            url,
            await query(
                url,
                "select s.node, s.calls from steps s join sessions x on "
                "x.id = s.session_id where x.request_id = :r order by s.step",
                r=session["request_id"],
            ),
        )
        assert [s["node"] for s in steps] == session["path"]
        assert sum(len(s["calls"] or []) for s in steps) == session["llm_calls"]
        assert all(c["raw"] is not None and c["messages"] for s in steps for c in s["calls"] or [])

    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{env['LLM4RERANK_METRICS_PORT']}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert 'llm4rerank_invalid_requests_total{code="schema"} 3.0' in metrics
    assert "llm4rerank_node_visits_total" in metrics and "llm4rerank_consumer_lag" in metrics

    # a request_id seen again returns the stored result, with no new LLM call
    served_before = sim.faults()["served"]
    await produce(bootstrap, env["LLM4RERANK_REQUEST_TOPIC"], [messages[0]])
    again = await collect(bootstrap, env["LLM4RERANK_RESULT_TOPIC"], until=31, timeout_s=20)
    repeats = [v for k, v in again if k == valid[0]["request_id"]]
    assert len(repeats) == 2 and repeats[0]["ranking"] == repeats[1]["ranking"]
    assert repeats[0]["completed_at"] == repeats[1]["completed_at"]
    assert sim.faults()["served"] == served_before


async def test_submit_from_store_replays_through_kafka(sim_llm, stream_env, start_worker):
    import subprocess

    sim = sim_llm("--seed", "4")
    env = {**stream_env, "LLM4RERANK_LLM_BASE_URL": sim.base_url}
    start_worker(env)
    originals = make_requests(3, seed=8, prefix="orig")
    bootstrap = env["LLM4RERANK_KAFKA_BOOTSTRAP"]
    await produce(bootstrap, env["LLM4RERANK_REQUEST_TOPIC"], [orjson.dumps(r) for r in originals])
    first = await collect(bootstrap, env["LLM4RERANK_RESULT_TOPIC"], until=3, timeout_s=60)
    assert len(first) == 3

    ids = [arg for r in originals for arg in ("--request-id", r["request_id"])]
    proc = subprocess.run(
        [CLI, "submit", "--from-store", *ids, "--suffix", "~again"], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()
    pairs = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(p["replay_of"] for p in pairs) == sorted(r["request_id"] for r in originals)

    results = await collect(bootstrap, env["LLM4RERANK_RESULT_TOPIC"], until=6, timeout_s=60)
    replayed = {k: v for k, v in results if k and k.endswith("~again")}
    assert set(replayed) == {f"{r['request_id']}~again" for r in originals}
    stored = await query(
        env["LLM4RERANK_DATABASE_URL"],
        "select request_id, replay_of, replay_mode from sessions where request_id like 'orig-%~again'",
    )
    assert {(s["replay_of"], s["replay_mode"]) for s in stored} == {
        (r["request_id"], "kafka") for r in originals
    }
    # the same requests and the same simulated answers give the same rankings
    before = {k: v["ranking"] for k, v in first}
    assert all(replayed[f"{k}~again"]["ranking"] == ranking for k, ranking in before.items())
