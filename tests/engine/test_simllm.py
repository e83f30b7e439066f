"""The simulated LLM: says it is simulated, reads both prompt sets, answers JSON or text as
asked, reports usage, and injects seeded faults."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from engine_kit import SIM_MODEL, SimLLM, default_prompts, example_requests, ids

from worker.config import Settings
from worker.engine.nodes import offered_after, plan_walk
from worker.engine.parse import parse_answer
from worker.engine.prompts import SessionPrompts
from worker.engine.steps import NodeAsk
from worker.policies.heuristic import HeuristicPolicy
from worker.policies.llm import LLMPolicy
from worker.simllm.faults import Faults
from worker.simllm.server import SimState, create_app


def client(faults: Faults | None = None, seed: int = 1) -> httpx.AsyncClient:
    state = SimState(Settings().prompts_dir, faults or Faults(), seed, max_concurrent=4)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)), base_url="http://sim")


def ask_for(request, node: str, pool: list[tuple[str, list[str]]]) -> NodeAsk:
    plan = plan_walk(request)
    size = len(pool) + (1 if node != "backward" else -1)
    pool_t = tuple((n, tuple(r)) for n, r in pool)
    return NodeAsk(
        request,
        plan,
        node,
        len(pool) + 1,
        pool_t,
        offered_after(plan, size),
        tuple(n for n, _ in pool),
        5,
        0.0,
    )


async def post(
    c: httpx.AsyncClient, messages: list[dict[str, Any]], fmt: dict[str, Any] | None, model: str = SIM_MODEL
) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": messages}
    if fmt is not None:
        body["response_format"] = fmt
    return await c.post("/v1/chat/completions", json=body)


async def test_models_say_simulated() -> None:
    async with client() as c:
        data = (await c.get("/v1/models")).json()["data"]
        health = (await c.get("/health")).json()
    assert [m["id"] for m in data] == [SIM_MODEL] and "simulated" in SIM_MODEL
    assert "simulated" in data[0]["owned_by"]
    assert health["simulated"] is True


@pytest.mark.parametrize("prompt_set", ["default", "paper"])
@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("node", ["accuracy", "diversity", "fairness", "backward"])
async def test_reads_both_prompt_sets_and_answers_as_asked(
    prompt_set: str, structured: bool, node: str
) -> None:
    request = example_requests()[3]
    prompts = default_prompts(prompt_set)
    session = SessionPrompts(prompts, request, plan_walk(request), structured)
    upstream = ids(request)
    pool = [("accuracy", upstream[::-1])] + ([("diversity", upstream)] if node == "backward" else [])
    ask = ask_for(request, node, pool)
    messages = session.messages(node, pool, ask.offered)
    fmt = LLMPolicy(None, prompts).response_format(ask, session) if structured else None  # type: ignore[arg-type]
    async with client() as c:
        response = await post(c, messages, fmt)
    assert response.status_code == 200, response.text
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    assert body["model"] == SIM_MODEL and body["system_fingerprint"] == "sim-llm-simulated"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 100 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if structured:
        answer = json.loads(content)
        assert set(answer) == ({"next_node"} if node == "backward" else {"ranking", "next_node"})
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)
        assert content.startswith("[") or node == "backward"
    parsed = parse_answer(
        content,
        candidates=upstream,
        previous=ask.previous,
        offered=ask.offered,
        expect_ranking=node != "backward",
        aliases=prompts.uses_aliases,
    )
    assert parsed.problem is None
    assert parsed.notes == [] or (node == "backward" and not structured)  # a bare node name
    assert parsed.next_node in ask.offered
    if node != "backward":
        # the simulation's brain is the heuristic policy: the same list as the heuristic gives
        # on what the prompt shows (the default set shows scores to 3 significant digits)
        shown = request
        if prompts.manifest["feature_style"] == "columns":
            shown = request.model_copy(
                update={
                    "candidates": [
                        c.model_copy(update={"score": float(f"{c.score:.3g}")}) for c in request.candidates
                    ]
                }
            )
        assert parsed.ranking == HeuristicPolicy().answer_now(ask_for(shown, node, pool)).ranking


async def test_reask_conversations_are_read_too() -> None:
    request = example_requests()[0]
    session = SessionPrompts(default_prompts(), request, plan_walk(request), True)
    ask = ask_for(request, "accuracy", [])
    messages = [
        *session.messages("accuracy", [], ask.offered),
        {"role": "assistant", "content": "no"},
        session.reask("no list of candidates found", "accuracy", ask.offered),
    ]
    async with client() as c:
        response = await post(c, messages, None)
    assert response.status_code == 200


async def test_wrong_model_and_unreadable_prompts_are_refused() -> None:
    async with client() as c:
        wrong = await post(c, [{"role": "user", "content": "hi"}], None, model="gpt-4")
        unreadable = await post(c, [{"role": "user", "content": "hi"}], None)
        broken = await c.post("/v1/chat/completions", content=b"{not json")
    assert wrong.status_code == 404 and SIM_MODEL in wrong.json()["message"]
    assert unreadable.status_code == 400 and "could not read" in unreadable.json()["message"]
    assert broken.status_code == 400


async def test_faults_are_seeded_and_switchable() -> None:
    request = example_requests()[1]
    session = SessionPrompts(default_prompts(), request, plan_walk(request), False)
    messages = session.messages("accuracy", [], ask_for(request, "accuracy", []).offered)

    async def statuses(seed: int) -> list[tuple[int, str]]:
        out = []
        async with client(Faults(error_rate=0.3, rate_limit_rate=0.2, malformed_rate=0.5), seed) as c:
            for _ in range(30):
                r = await post(c, messages, None)
                out.append((r.status_code, r.text if r.status_code == 200 else ""))
        return out

    one, two = await statuses(1), await statuses(1)
    assert [s for s, _ in one] == [s for s, _ in two]
    assert {s for s, _ in one} == {200, 429, 500}
    assert len({text for s, text in one if s == 200}) > 1  # some answers malformed
    async with client(Faults(error_rate=1.0)) as c:
        assert (await post(c, messages, None)).status_code == 500
        await c.post("/sim/faults", json={"error_rate": 0.0})
        assert (await post(c, messages, None)).status_code == 200
        state = (await c.get("/sim/faults")).json()
        assert state["served"] == 1 and state["error_rate"] == 0.0


def test_the_process_says_it_is_simulated(sim: SimLLM) -> None:
    line = sim.log.read_text().strip().splitlines()[0]
    assert "SIMULATED" in line and SIM_MODEL in line and f":{sim.port}/v1" in line
    assert "seed 1" in line
    models = sim.get("/v1/models")
    assert models["data"][0]["id"] == SIM_MODEL and "simulated" in models["data"][0]["owned_by"]
