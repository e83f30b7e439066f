"""The walk over the node graph with a scripted model: paths, Backward, the cap, repairs,
re-asks, fallbacks and deadlines."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest
from engine_kit import (
    FakeClock,
    ScriptedChat,
    default_prompts,
    example_requests,
    ids,
    is_permutation,
    js,
    make_request,
    request_dict,
    scripted_policy,
)

from worker.config import Settings
from worker.engine.nodes import offered_after, plan_walk
from worker.engine.steps import HTTPAttempt, ListJournal, LLMCall
from worker.engine.walk import walk
from worker.errors import DeadlineExceeded, RequestError
from worker.policies.heuristic import HeuristicPolicy
from worker.policies.llm import LLMPolicy
from worker.schemas import parse_request
from worker.service import Reranker

N = 20
A = list(range(1, N + 1))  # aliases in upstream order
D = A[::-1]
F = A[10:] + A[:10]
ALL = ["accuracy", "diversity", "fairness", "backward", "stop"]
ASPECTS = ["accuracy", "diversity", "fairness"]

BUG_REASON_NOTE = (
    "bug: walk.py reads `reason_note` at the Stop record, but it is only assigned "
    "when the cap is reached or the loop ends without break; a walk that breaks "
    "as degraded (unusable answer or deadline) and is not redone by the fallback "
    "raises UnboundLocalError"
)


@pytest.fixture
def request_():
    return example_requests()[0]  # goal: accuracy, then diversity; diversity and fairness enabled


def labels(request, aliases: list[int]) -> list[str]:
    item = ids(request)
    return [item[a - 1] for a in aliases]


async def run(
    request,
    script: list[Any],
    *,
    max_steps: int = 5,
    reasks: int = 1,
    structured: bool = True,
    fallback: bool = True,
    clock: FakeClock | None = None,
    step_seconds: float = 0.0,
    deadline_ms: int = 30_000,
    journal=None,
    **plan_kw,
):
    policy, chat = scripted_policy(
        script, structured=structured, reasks=reasks, clock=clock, step_seconds=step_seconds
    )
    plan = plan_walk(request, max_steps=max_steps, deadline_ms=deadline_ms, **plan_kw)
    plan = dataclasses.replace(plan, max_steps=max_steps, deadline_ms=deadline_ms)
    kwargs: dict[str, Any] = {"fallback": HeuristicPolicy() if fallback else None}
    if clock is not None:
        kwargs["clock"] = clock
    if journal is not None:
        kwargs["journal"] = journal
    outcome = await walk(request, policy, plan, **kwargs)
    return outcome, chat


def node_of(chat_request: dict[str, Any]) -> str:
    user = chat_request["messages"][1]["content"]
    return user.split("Node: ", 1)[1].split("\n", 1)[0]


# ---------------------------------------------------------------------------------------------
# paths


async def test_starts_at_accuracy_and_stop_first_ends_with_its_list(request_) -> None:
    outcome, chat = await run(request_, [js(D, "stop")])
    assert node_of(chat.requests[0]) == "accuracy"
    assert outcome.path == ["accuracy", "stop"]
    assert outcome.ranking == labels(request_, D)
    assert (outcome.status, outcome.reason, outcome.policy, outcome.llm_calls) == ("ok", None, "llm", 1)
    assert [s.node for s in outcome.steps] == ["accuracy", "stop"]
    assert outcome.steps[-1].ranking == outcome.ranking and outcome.steps[-1].policy == "walk"


async def test_a_walk_follows_the_named_nodes(request_) -> None:
    outcome, chat = await run(request_, [js(A, "diversity"), js(D, "fairness"), js(F, "stop")])
    assert outcome.path == ["accuracy", "diversity", "fairness", "stop"]
    assert [node_of(r) for r in chat.requests] == ["accuracy", "diversity", "fairness"]
    assert outcome.ranking == labels(request_, F)
    assert [s.pool_size for s in outcome.steps] == [1, 2, 3, 3]
    assert outcome.usage.prompt_tokens == 30 and outcome.usage.completion_tokens == 15


async def test_backward_drops_the_latest_entry_and_asks_only_for_the_next_node(request_) -> None:
    outcome, chat = await run(request_, [js(A, "diversity"), js(D, "backward"), js(None, "stop")])
    assert outcome.path == ["accuracy", "diversity", "backward", "stop"]
    assert outcome.ranking == labels(request_, A)  # Diversity's list was dropped
    back = outcome.steps[2]
    assert back.node == "backward" and back.ranking is None
    assert back.removed == labels(request_, D) and back.pool_size == 1
    schema = chat.requests[2]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["next_node"] and "ranking" not in schema["properties"]
    assert "Name only the next node" in chat.requests[2]["messages"][1]["content"]


async def test_backward_chain_empties_the_pool(request_) -> None:
    script = [js(A, "diversity"), js(D, "backward"), "backward", "Fairness.", js(F, "stop")]
    outcome, chat = await run(request_, script, max_steps=5)
    assert outcome.path == ["accuracy", "diversity", "backward", "backward", "fairness", "stop"]
    assert [s.removed for s in outcome.steps[2:4]] == [labels(request_, D), labels(request_, A)]
    assert [s.pool_size for s in outcome.steps] == [1, 2, 1, 0, 1, 1]
    # Backward offers no node whose list was withdrawn; with an empty pool after it, the
    # second Backward offers neither backward nor stop
    assert outcome.steps[2].offered == ["accuracy", "fairness", "backward", "stop"]
    assert outcome.steps[3].offered == ["fairness"]
    assert chat.requests[3]["response_format"]["json_schema"]["schema"]["properties"]["next_node"][
        "enum"
    ] == ["fairness"]
    assert outcome.ranking == labels(request_, F) and outcome.status == "ok"


async def test_stop_with_an_empty_pool_gives_the_upstream_order(request_) -> None:
    # the cap (2 calls) forces Stop right after a Backward that emptied the pool
    outcome, _ = await run(request_, [js(D, "backward"), "accuracy"], max_steps=2)
    assert outcome.path == ["accuracy", "backward", "stop"]
    assert outcome.ranking == ids(request_)
    assert outcome.steps[-1].pool_size == 0


async def test_backward_naming_a_node_not_on_offer_is_reasked_then_the_goal_decides(request_) -> None:
    script = [js(D, "backward"), js(None, "stop"), "Stop.", js(A, "stop")]
    outcome, _ = await run(request_, script)
    back = outcome.steps[1]
    assert back.offered == ["diversity", "fairness"]
    assert len(back.calls) == 2  # one corrective re-ask
    assert "call 1: next node 'stop' is not on offer" in back.notes
    assert "call 2 unusable: no next node named" in back.notes
    assert "no usable next node; chose 'diversity' from the goal" in back.notes
    assert outcome.path == ["accuracy", "backward", "diversity", "stop"]
    assert outcome.llm_calls == 4


# ---------------------------------------------------------------------------------------------
# the cap


async def test_the_cap_forces_stop(request_) -> None:
    outcome, chat = await run(
        request_, [js(A, "diversity"), js(D, "fairness"), js(F, "diversity")], max_steps=3
    )
    assert outcome.path == ["accuracy", "diversity", "fairness", "stop"]
    assert len(chat.requests) == 3 and outcome.llm_calls == 3
    assert outcome.ranking == labels(request_, F) and outcome.status == "ok"
    assert outcome.steps[-1].notes == ["step cap of 3 LLM calls reached"]


async def test_backward_calls_count_toward_the_cap(request_) -> None:
    script = [js(A, "diversity"), js(D, "backward"), "backward", "accuracy"]
    outcome, chat = await run(request_, script, max_steps=3)
    assert outcome.path == ["accuracy", "diversity", "backward", "stop"]
    assert len(chat.requests) == 3 and outcome.llm_calls == 3


async def test_reasks_count_toward_the_cap(request_) -> None:
    outcome, chat = await run(request_, ["no idea", js(A, "diversity"), js(D, "stop")], max_steps=2)
    assert outcome.path == ["accuracy", "stop"]
    assert len(chat.requests) == 2 and outcome.llm_calls == 2
    assert len(outcome.steps[0].calls) == 2


async def test_the_cap_leaves_no_room_for_a_reask(request_) -> None:
    outcome, chat = await run(request_, ["no idea", js(A, "stop")], max_steps=1)
    assert len(chat.requests) == 1  # calls_left was 1: no corrective re-ask
    assert outcome.status == "degraded" and outcome.policy == "llm+heuristic"


@pytest.mark.parametrize("cap", [1, 2, 4, 7])
async def test_a_model_that_never_stops_is_stopped_by_the_cap(request_, cap: int) -> None:
    script = [js(A, "diversity"), js(D, "backward")] * 10
    outcome, chat = await run(request_, script, max_steps=cap)
    assert len(chat.requests) == cap == outcome.llm_calls
    assert outcome.path[-1] == "stop" and len(outcome.path) <= cap + 1
    assert is_permutation(outcome.ranking, request_)


# ---------------------------------------------------------------------------------------------
# which nodes are offered


def test_offered_nodes_depend_on_the_pool() -> None:
    plan = plan_walk(make_request(1))
    assert offered_after(plan, 0) == ("accuracy", "diversity", "fairness")
    assert offered_after(plan, 1) == ("accuracy", "diversity", "fairness", "backward", "stop")
    assert offered_after(plan, 3) == offered_after(plan, 1)


def test_plan_enables_aspects_with_an_attribute_only() -> None:
    request = make_request(1, aspects={})
    assert plan_walk(request).aspect_names == ("accuracy",)
    request = make_request(1, aspects={"fairness": {"attribute": "year", "split_at": 1996}})
    assert plan_walk(request).aspect_names == ("accuracy", "fairness")
    # a deployment default whose attribute no candidate has is not offered
    plan = plan_walk(request, default_aspects={"diversity": {"attribute": "colour"}})
    assert plan.aspect_names == ("accuracy", "fairness")
    plan = plan_walk(request, default_aspects={"diversity": {"attribute": "genre"}})
    assert plan.aspect_names == ("accuracy", "diversity", "fairness")


def test_novelty_only_when_enabled() -> None:
    request = make_request(2)
    assert "novelty" not in plan_walk(request).aspect_names
    with_novelty = make_request(2, aspects={"novelty": {"attribute": "genre"}})
    assert "novelty" in plan_walk(with_novelty).aspect_names
    deployment = plan_walk(request, default_aspects={"novelty": {"attribute": "genre"}})
    assert deployment.aspect_names == ("accuracy", "diversity", "fairness", "novelty")


def test_an_unknown_aspect_is_a_request_error() -> None:
    request = make_request(2, aspects={"serendipity": {"attribute": "genre"}})
    with pytest.raises(RequestError) as info:
        plan_walk(request)
    assert info.value.code == "unknown_aspect" and "serendipity" in info.value.message


async def test_an_aspect_without_attribute_is_not_offered() -> None:
    request = make_request(4, aspects={}, goal="Focus on diversity")
    outcome, chat = await run(request, [js(A, "diversity"), js(D, "stop")])
    assert outcome.steps[0].offered == ["accuracy", "backward", "stop"]
    enum = chat.requests[0]["response_format"]["json_schema"]["schema"]["properties"]["next_node"]
    assert enum["enum"] == ["accuracy", "backward", "stop"]
    assert "Nodes: accuracy;" in chat.requests[0]["messages"][0]["content"]
    assert any("'diversity' is not on offer" in n for n in outcome.steps[0].notes)
    assert outcome.path == ["accuracy", "stop"]  # the goal's aspects are not enabled: stop


async def test_novelty_is_offered_and_prompted_when_enabled() -> None:
    request = make_request(5, aspects={"novelty": {"attribute": "genre"}}, goal="Focus on novelty")
    outcome, chat = await run(request, [js(A, "novelty"), js(D, "stop")])
    assert outcome.steps[0].offered == ["accuracy", "novelty", "backward", "stop"]
    assert outcome.path == ["accuracy", "novelty", "stop"]
    focus = chat.requests[1]["messages"][1]["content"]
    seen = sorted({g for h in request.user.history for g in h.features["genre"]})
    assert (
        f"Node: novelty\nFavour candidates whose genre is unlike the user's history (seen: {', '.join(seen)})"
    ) in focus


# ---------------------------------------------------------------------------------------------
# repairs and re-asks


async def test_repairs_are_recorded_in_the_step(request_) -> None:
    answer = json.dumps({"ranking": [3, 3, 99, *range(4, 15)], "next_node": "**Diversity**"})
    outcome, _ = await run(request_, [answer, js(D, "stop")])
    step = outcome.steps[0]
    assert step.problem is None and len(step.calls) == 1
    assert step.calls[0].raw == answer and step.calls[0].messages[1]["role"] == "user"
    assert "call 1: dropped 1 unknown id(s): 99" in step.notes
    assert "call 1: dropped 1 duplicate(s): 3" in step.notes
    assert "call 1: appended 8 missing item(s) in the previous order" in step.notes
    assert "call 1: next node '**Diversity**' read as 'diversity'" in step.notes
    # missing items follow the previous list, here the upstream order: 1, 2, 15..20
    assert step.ranking == labels(request_, [3, *range(4, 15), 1, 2, *range(15, 21)])
    assert outcome.path == ["accuracy", "diversity", "stop"]


async def test_missing_items_follow_the_latest_pool_entry(request_) -> None:
    outcome, _ = await run(request_, [js(D, "fairness"), js([5, 6, 7, 8, 9, 10, 11, 12, 13, 14], "stop")])
    assert outcome.ranking == labels(request_, [*range(5, 15), 20, 19, 18, 17, 16, 15, 4, 3, 2, 1])


async def test_no_next_node_is_chosen_from_the_goal(request_) -> None:
    outcome, _ = await run(request_, [js(A), js(D)])
    assert outcome.path == ["accuracy", "diversity", "stop"]
    assert "no usable next node; chose 'diversity' from the goal" in outcome.steps[0].notes
    assert "no usable next node; chose 'stop' from the goal" in outcome.steps[1].notes


async def test_an_unusable_answer_gets_one_corrective_reask(request_) -> None:
    outcome, chat = await run(request_, ["Sorry, I can't.", js(D, "stop")])
    step = outcome.steps[0]
    assert [c.raw for c in step.calls] == ["Sorry, I can't.", js(D, "stop")]
    assert "call 1 unusable: no list of candidates found" in step.notes
    assert chat.requests[1]["messages"][2] == {"role": "assistant", "content": "Sorry, I can't."}
    assert "could not be used: no list of candidates found" in chat.requests[1]["messages"][3]["content"]
    assert outcome.status == "ok" and outcome.ranking == labels(request_, D) and outcome.llm_calls == 2


@pytest.mark.parametrize("reasks", [0, 1, 2, 3])
async def test_the_number_of_reasks_is_configurable(request_, reasks: int) -> None:
    script = ["garbage"] * (reasks + 1) + [js(A, "stop")]
    outcome, chat = await run(request_, script, reasks=reasks)
    assert len(chat.requests) == reasks + 1
    assert outcome.status == "degraded"


async def test_never_usable_falls_back_to_the_heuristic(request_) -> None:
    outcome, chat = await run(request_, ["I am sorry.", '{"ranking": [1, 2], "next_node": "stop"}'])
    plan = plan_walk(request_)
    heuristic = await walk(request_, HeuristicPolicy(), plan)
    assert outcome.status == "degraded" and outcome.policy == "llm+heuristic"
    assert outcome.reason.startswith("unusable answer at accuracy: only 2 of 20 candidates recognised")
    assert outcome.reason.endswith("the heuristic policy produced the list")
    assert outcome.ranking == heuristic.ranking and is_permutation(outcome.ranking, request_)
    assert outcome.path == ["accuracy", *heuristic.path]
    assert outcome.llm_calls == 2 and len(chat.requests) == 2
    assert [s.step for s in outcome.steps] == list(range(1, len(outcome.steps) + 1))
    assert outcome.steps[0].policy == "llm" and outcome.steps[0].problem
    assert {s.policy for s in outcome.steps[1:-1]} == {"heuristic"}


async def test_an_llm_error_at_the_first_step_falls_back(request_) -> None:
    class Failing(ScriptedChat):
        async def complete(self, messages, response_format, deadline, max_tokens=None):
            self.requests.append({"messages": messages})
            from worker.engine.steps import LLMCall

            return LLMCall(messages=messages, error="HTTP 400: bad request")

    chat = Failing([])
    policy = LLMPolicy(chat, default_prompts(), structured=True, reasks=1)
    outcome = await walk(request_, policy, plan_walk(request_), fallback=HeuristicPolicy())
    assert len(chat.requests) == 1  # an HTTP error is not re-asked
    assert outcome.policy == "llm+heuristic" and "LLM error: HTTP 400" in outcome.reason
    assert outcome.steps[0].calls[0].error == "HTTP 400: bad request"
    assert is_permutation(outcome.ranking, request_)


def outage(attempts: int = 3) -> DeadlineExceeded:
    """What the transport raises when the endpoint failed until the deadline."""
    call = LLMCall(
        messages=[],
        error="deadline passed: HTTP 500",
        deadline_passed=True,
        retries=attempts - 1,
        latency_ms=900.0,
        attempts=[HTTPAttempt(status=500, error="HTTP 500: down", latency_ms=300.0) for _ in range(attempts)],
    )
    return DeadlineExceeded(f"LLM endpoint unavailable ({attempts} attempt(s), last: HTTP 500)", [call])


async def test_an_outage_until_the_deadline_is_answered_by_the_heuristic(request_) -> None:
    outcome, _ = await run(request_, [outage(4)])
    assert outcome.status == "degraded" and outcome.policy == "llm+heuristic"
    assert "LLM endpoint unavailable" in outcome.reason and "heuristic policy produced" in outcome.reason
    assert outcome.llm_calls == 1
    cut = outcome.steps[0]
    assert cut.node == "accuracy" and cut.problem.startswith("deadline of")
    assert len(cut.calls[0].attempts) == 4 and cut.retries == 3 and cut.latency_ms == 900.0
    assert is_permutation(outcome.ranking, request_)


async def test_calls_finished_before_the_deadline_are_kept_and_counted(request_) -> None:
    outcome, chat = await run(request_, ["garbage", outage(2)])
    assert len(chat.requests) == 2
    assert outcome.llm_calls == 2
    cut = outcome.steps[0]
    assert [c.raw for c in cut.calls] == ["garbage", None]
    assert outcome.usage.prompt_tokens == 10 and outcome.usage.completion_tokens == 5


async def test_unusable_after_a_list_keeps_the_previous_list(request_) -> None:
    outcome, chat = await run(request_, [js(A, "diversity"), "garbage", "still garbage"])
    assert len(chat.requests) == 3
    assert outcome.status == "degraded"
    assert outcome.reason == "unusable answer at diversity: no list of candidates found"
    assert outcome.policy == "llm"
    assert outcome.ranking == labels(request_, A)
    assert outcome.path == ["accuracy", "diversity", "stop"]
    assert outcome.steps[1].ranking is None and outcome.steps[1].pool_size == 1


async def test_an_llm_failure_at_backward_is_degraded(request_) -> None:
    outcome, _ = await run(request_, [js(A, "diversity"), js(D, "backward"), outage()])
    assert outcome.steps[2].problem.startswith("deadline of")
    assert outcome.path == ["accuracy", "diversity", "backward", "stop"]
    assert outcome.ranking == labels(request_, D)  # Backward never ran
    assert outcome.status == "degraded"
    assert outcome.reason and "backward" in outcome.reason


async def test_never_usable_without_a_fallback_gives_the_upstream_order(request_) -> None:
    outcome, _ = await run(request_, ["garbage", "garbage"], fallback=False)
    assert outcome.status == "degraded" and outcome.ranking == ids(request_)


# ---------------------------------------------------------------------------------------------
# deadline


async def test_the_transport_gets_the_walks_deadline(request_) -> None:
    clock = FakeClock(500.0)
    _, chat = await run(request_, [js(A, "stop")], clock=clock, deadline_ms=2500)
    assert chat.requests[0]["deadline"] == 502.5


async def test_deadline_at_the_first_step_falls_back(request_) -> None:
    clock = FakeClock()
    outcome, _ = await run(request_, [DeadlineExceeded("slow")], clock=clock, deadline_ms=1000)
    assert outcome.status == "degraded" and outcome.policy == "llm+heuristic"
    assert outcome.reason.startswith("deadline of 1000 ms passed at accuracy")
    assert is_permutation(outcome.ranking, request_)
    assert outcome.llm_calls == 0


async def test_deadline_later_keeps_the_best_list_so_far(request_) -> None:
    clock = FakeClock()
    # each call takes 0.6 s of fake time; the third one starts after the 1 s deadline
    script = [js(A, "diversity"), js(D, "fairness"), js(F, "stop")]
    outcome, chat = await run(request_, script, clock=clock, step_seconds=0.6, deadline_ms=1000)
    assert len(chat.requests) == 3 and outcome.llm_calls == 2
    assert outcome.status == "degraded"
    assert outcome.reason == "deadline of 1000 ms passed at fairness"
    assert outcome.ranking == labels(request_, D)
    assert outcome.path == ["accuracy", "diversity", "stop"]


# ---------------------------------------------------------------------------------------------
# the trace


async def test_every_step_records_what_was_asked_and_answered(request_) -> None:
    journal = ListJournal()
    script = [
        "<think>hmm</think>\nnope",
        js([2, 1, *A[2:]], "Diversity."),
        js(D, "backward"),
        "fairness",
        js(F, "stop"),
    ]
    outcome, chat = await run(request_, script, journal=journal, max_steps=6)
    assert journal.steps == outcome.steps
    calls = [call for step in outcome.steps for call in step.calls]
    assert [c.raw for c in calls] == script
    assert [c.messages for c in calls] == [r["messages"] for r in chat.requests]
    assert all(c.response_format for c in calls)
    first = outcome.steps[0]
    assert "call 1 unusable: no list of candidates found" in first.notes
    assert "call 2: next node 'Diversity.' read as 'diversity'" in first.notes
    assert [s.step for s in outcome.steps] == [1, 2, 3, 4, 5]
    assert outcome.steps[0].prompt_tokens == 20 and outcome.steps[0].completion_tokens == 10


async def test_the_same_answers_give_the_same_walk(request_) -> None:
    script = [js(A, "diversity"), "[3, 1]; fairness", js(D, "backward"), "stop", "x"]
    one, _ = await run(request_, script)
    two, _ = await run(request_, script)
    assert [s.model_dump() for s in one.steps] == [s.model_dump() for s in two.steps]
    assert (one.ranking, one.path, one.status) == (two.ranking, two.path, two.status)


# ---------------------------------------------------------------------------------------------
# the heuristic policy and the service wrapper


@pytest.mark.parametrize(
    ("goal", "path"),
    [
        ("Mainly focus on accuracy, followed by diversity", ["accuracy", "diversity", "stop"]),
        ("Focus on fairness", ["accuracy", "fairness", "stop"]),
        ("Mainly focus on fairness, followed by diversity", ["accuracy", "fairness", "diversity", "stop"]),
        ("Rank them well", ["accuracy", "stop"]),
    ],
)
async def test_heuristic_walk_follows_the_goal(goal: str, path: list[str]) -> None:
    request = make_request(9, goal=goal)
    outcome = await walk(request, HeuristicPolicy(), plan_walk(request))
    assert outcome.path == path and outcome.status == "ok" and outcome.llm_calls == 0
    assert is_permutation(outcome.ranking, request)


async def test_reranker_result_names_model_and_prompt_version(request_) -> None:
    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m-1", max_steps=5)
    chat = ScriptedChat([js(A, "diversity"), js(D, "stop")])
    result, outcome = await Reranker(settings, chat).run(request_)
    assert result.status == "ok" and result.model == "m-1" and result.policy == "llm"
    assert result.prompt_version == default_prompts().version
    assert result.ranking == outcome.ranking == labels(request_, D)
    assert result.path == ["accuracy", "diversity", "stop"] and result.llm_calls == 2
    heuristic, _ = await Reranker(settings, None, policy="heuristic").run(request_)
    assert heuristic.model == "heuristic" and heuristic.prompt_version == "heuristic"


async def test_backward_prompt_shows_the_pool_after_the_drop(request_) -> None:
    _, chat = await run(request_, [js(A, "diversity"), js(D, "backward"), js(None, "stop")])
    prompt = chat.requests[2]["messages"][1]["content"]
    assert "1 accuracy: " in prompt
    assert "2 diversity: " not in prompt


# ---------------------------------------------------------------------------------------------
# property: whatever the model says, the ranking is a permutation of the candidates

NODES = [
    "accuracy",
    "diversity",
    "fairness",
    "novelty",
    "backward",
    "stop",
    "Stop.",
    "**BACKWARD**",
    "",
    "halt",
]


def random_answer(rng: random.Random, n: int) -> Any:
    roll = rng.random()
    perm = list(range(1, n + 1))
    rng.shuffle(perm)
    node = rng.choice(NODES)
    if roll < 0.25:
        return json.dumps({"ranking": perm, "next_node": node})
    if roll < 0.35:
        return json.dumps({"next_node": node})
    if roll < 0.45:
        return node
    if roll < 0.6:
        part = perm[: rng.randrange(0, n + 1)] + [rng.randrange(-3, 3 * n) for _ in range(rng.randrange(4))]
        return f"<think>[{', '.join('1' * n)}]</think>[{', '.join(map(str, part))}]; {node}"
    if roll < 0.7:
        text = json.dumps({"ranking": perm, "next_node": node})
        return text[: rng.randrange(len(text))]
    if roll < 0.8:
        return "".join(rng.choice("[]{},;: 0123456789１٣abcstop\n") for _ in range(rng.randrange(60)))
    if roll < 0.85:
        return outage(1)
    if roll < 0.9:
        return DeadlineExceeded("deadline")
    return "I'm sorry, I can't help with that."


async def random_walks(trials: int, seed: int) -> int:
    rng = random.Random(seed)
    degraded = 0
    for trial in range(trials):
        n = rng.randrange(2, 25)
        aspects = rng.choice(
            [
                {},
                {"diversity": {"attribute": "genre"}},
                {
                    "diversity": {"attribute": "genre"},
                    "novelty": {"attribute": "genre"},
                    "fairness": {"attribute": "year", "split_at": 1996},
                },
            ]
        )
        request = parse_request(json.dumps(request_dict(rng, n=n, rid=f"p-{trial}", aspects=aspects)))
        script = [random_answer(rng, n) for _ in range(40)]
        outcome, _ = await run(
            request,
            script,
            max_steps=rng.randrange(1, 9),
            reasks=rng.randrange(3),
            structured=rng.random() < 0.5,
        )
        assert is_permutation(outcome.ranking, request), (trial, outcome)
        assert outcome.path[-1] == "stop" and outcome.status in ("ok", "degraded")
        assert (outcome.reason is None) == (outcome.status == "ok")
        degraded += outcome.status == "degraded"
    return degraded


async def test_random_answers_at_the_first_step_always_give_a_permutation() -> None:
    """max_steps=1: the first answer decides; a bad one is redone by the heuristic."""
    rng = random.Random(11)
    for trial in range(150):
        n = rng.randrange(2, 21)  # one call: lists longer than the window take several
        request = parse_request(json.dumps(request_dict(rng, n=n, rid=f"f-{trial}")))
        outcome, _ = await run(request, [random_answer(rng, n)], max_steps=1)
        assert is_permutation(outcome.ranking, request)
        assert outcome.policy in ("llm", "llm+heuristic")
        assert (outcome.policy == "llm+heuristic") == (outcome.status == "degraded")


async def test_random_answers_always_give_a_permutation() -> None:
    degraded = await random_walks(300, seed=2406)
    assert degraded > 30


async def test_backward_offers_stop_when_the_dropped_node_was_the_only_one() -> None:
    request = make_request(3, n=6, aspects={})  # only Accuracy is enabled
    outcome, chat = await run(request, [js(list(range(1, 7)), "backward"), "stop"])
    back = outcome.steps[1]
    assert back.node == "backward" and back.offered == ["stop"]
    assert chat.requests[1]["response_format"]["json_schema"]["schema"]["properties"]["next_node"][
        "enum"
    ] == ["stop"]
    assert outcome.path == ["accuracy", "backward", "stop"] and outcome.ranking == ids(request)


async def test_after_backward_the_withdrawn_list_is_in_every_later_prompt(request_) -> None:
    script = [js(A, "diversity"), js(D, "backward"), "fairness", js(F, "accuracy"), js(A, "stop")]
    outcome, chat = await run(request_, script, max_steps=5)
    assert outcome.path == ["accuracy", "diversity", "backward", "fairness", "accuracy", "stop"]
    assert outcome.steps[2].offered == ["accuracy", "fairness", "backward", "stop"]
    withdrawn = "withdrawn by backward, do not repeat: diversity: " + ",".join(map(str, D))
    for later in chat.requests[3:]:  # from the step after Backward on
        assert withdrawn in later["messages"][1]["content"]
    assert outcome.steps[3].withdrawn == [labels(request_, D)]
    prompts = [json.dumps(r["messages"]) for r in chat.requests]
    assert len(prompts) == len(set(prompts))
