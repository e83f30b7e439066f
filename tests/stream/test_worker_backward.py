"""Backward through the worker: sim-llm (SIMULATED) names Backward at a seeded share of steps;
the stored steps show the withdrawn list in later prompts and no prompt is asked twice."""

from __future__ import annotations

import orjson
from stream_helpers import collect, full_calls, make_requests, produce, query


async def test_backward_steps_through_kafka_never_repeat_a_prompt(sim_llm, stream_env, start_worker) -> None:
    sim = sim_llm("--seed", "2", "--backward-rate", "0.5")
    env = {**stream_env, "LLM4RERANK_LLM_BASE_URL": sim.base_url, "LLM4RERANK_MAX_STEPS": "8"}
    start_worker(env)
    requests = make_requests(8, seed=5, prefix="back", candidates=10)
    bootstrap = env["LLM4RERANK_KAFKA_BOOTSTRAP"]
    await produce(bootstrap, env["LLM4RERANK_REQUEST_TOPIC"], [orjson.dumps(r) for r in requests])
    results = await collect(bootstrap, env["LLM4RERANK_RESULT_TOPIC"], until=8, timeout_s=120)
    by_id = {key: value for key, value in results}
    assert set(by_id) == {r["request_id"] for r in requests}
    with_backward = [r for r in by_id.values() if "backward" in r["path"]]
    assert with_backward, [r["path"] for r in by_id.values()]
    url = env["LLM4RERANK_DATABASE_URL"]
    after_backward = 0
    for result in with_backward:
        steps = await full_calls(
            url,
            await query(
                url,
                "select s.node, s.calls, s.withdrawn from steps s join sessions x on "
                "x.id = s.session_id where x.request_id = :r order by s.step",
                r=result["request_id"],
            ),
        )
        prompts = [orjson.dumps(s["calls"][0]["messages"]).decode() for s in steps if s["calls"]]
        assert len(prompts) == len(set(prompts))
        nodes = [s["node"] for s in steps]
        back = nodes.index("backward")
        if back + 1 < len(steps) and steps[back + 1]["calls"]:
            later = steps[back + 1]["calls"][0]["messages"][-1]["content"]
            assert "withdrawn by backward" in later
            assert steps[back + 1]["withdrawn"]  # stored with the step
            after_backward += 1
    assert after_backward, "no walk went on after a Backward"
