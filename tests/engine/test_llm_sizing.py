"""The LLM policy's sizing and repair rules with a scripted model: the repair threshold, bounded
re-asks, windows for long lists, shortened feature text, the answer shapes, and the token
estimate against the real tokenizer."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from cases import cases
from engine_kit import ScriptedChat, default_prompts, ids, is_permutation, js, make_request
from hypothesis import given
from hypothesis import strategies as st

from worker.engine.nodes import plan_walk
from worker.engine.parse import parse_answer
from worker.engine.tokens import EstimateCounter, SentencePieceCounter, prompt_tokens
from worker.engine.walk import walk
from worker.policies.heuristic import HeuristicPolicy
from worker.policies.llm import EXCERPT_CHARS, LLMOptions, LLMPolicy, excerpt
from worker.samples import sample_requests
from worker.schemas import parse_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_server_kit import tokenizer_file


async def run(request, script, *, max_steps: int = 3, reasks: int = 1, **options):
    chat = ScriptedChat(list(script))
    policy = LLMPolicy(chat, default_prompts(), structured=True, reasks=reasks, options=LLMOptions(**options))
    plan = plan_walk(request, max_steps=max_steps)
    return await walk(request, policy, plan, fallback=HeuristicPolicy()), chat


async def test_a_ranking_needing_more_repair_than_allowed_is_reasked_then_degrades() -> None:
    request = make_request(1, n=20)
    short = js(list(range(1, 16)), "stop")  # 5 of 20 missing: 25% repaired
    outcome, chat = await run(request, [short, short], max_repair_share=0.2)
    step = outcome.steps[0]
    assert step.ranking is None and "at most 20% may be repaired" in (step.problem or "")
    assert len(chat.requests) == 2 and outcome.status == "degraded"
    assert step.repair is not None and step.repair.answers == 2 and step.repair.appended == 10
    outcome, _ = await run(request, [short], max_repair_share=0.3)
    assert outcome.status == "ok" and outcome.steps[0].repair.appended == 5
    assert outcome.steps[0].repair.permutations == 0


async def test_a_permutation_counts_as_one() -> None:
    request = make_request(2, n=8)
    outcome, _ = await run(request, [js([8, 7, 6, 5, 4, 3, 2, 1], "stop")])
    assert outcome.steps[0].repair.model_dump() == {
        "answers": 1,
        "permutations": 1,
        "appended": 0,
        "duplicates": 0,
        "unknown": 0,
        "ties": 0,
    }


@cases(40)
@given(st.text(min_size=0, max_size=20_000))
def test_excerpt_is_bounded_whatever_the_answer(raw: str) -> None:
    cut = excerpt(raw)
    assert len(cut) <= EXCERPT_CHARS + 3
    if len(" ".join(raw.split())) <= EXCERPT_CHARS:
        assert cut == " ".join(raw.split())


async def test_a_reask_quotes_an_excerpt_not_the_whole_answer() -> None:
    request = make_request(3, n=20)
    long_answer = "I think " * 400 + "[1, 1, 1]"
    outcome, chat = await run(request, [long_answer, js(list(range(1, 21)), "stop")])
    second = chat.requests[1]["messages"]
    assert second[:2] == chat.requests[0]["messages"]
    assert len(second[2]["content"]) <= EXCERPT_CHARS + 3 and second[2]["role"] == "assistant"
    assert "could not be used" in second[3]["content"]
    assert outcome.status == "ok"


async def test_a_reask_that_would_not_fit_the_context_is_not_sent() -> None:
    request = make_request(4, n=10)
    first = LLMPolicy(ScriptedChat([]), default_prompts(), options=LLMOptions())
    plan = plan_walk(request, max_steps=3)
    from worker.engine.steps import NodeAsk

    ask = NodeAsk(request, plan, "accuracy", 1, (), ("accuracy", "stop"), (), 3, 1e18)
    session = first.session(ask)
    needed = prompt_tokens(EstimateCounter(), session.messages("accuracy", [], ask.offered))
    # room for the first prompt and its answer, not for a re-ask on top
    outcome, chat = await run(request, ["no idea"], context_tokens=needed + 60 + 48 + 10, max_steps=3)
    assert len(chat.requests) == 1
    assert any("no re-ask: it would not fit the context" in n for n in outcome.steps[0].notes)


async def test_long_lists_are_reranked_in_sliding_windows_bottom_to_top() -> None:
    request = make_request(5, n=45)
    rng = random.Random(5)

    def answer(messages, deadline):
        text = messages[0]["content"]
        n = sum(1 for line in text.splitlines() if line[:1].isdigit() and ". " in line)
        order = list(range(1, n + 1))
        rng.shuffle(order)
        return js(order, "stop")

    outcome, chat = await run(request, [answer] * 10, max_steps=1, window=20, window_step=10)
    step = outcome.steps[0]
    assert [c.window for c in step.calls] == [[26, 45], [16, 35], [6, 25], [1, 20]]
    assert is_permutation(outcome.ranking, request) and outcome.status == "ok"
    assert all(
        len(
            c.response_format["json_schema"]["schema"]["properties"]["ranking"]["items"]
            and c.response_format["json_schema"]["schema"]["properties"]["ranking"]
        )
        for c in step.calls
    )
    assert all(
        c.response_format["json_schema"]["schema"]["properties"]["ranking"]["maxItems"] == 20
        for c in step.calls
    )
    assert "Goal: " + request.goal in chat.requests[0]["messages"][0]["content"]
    assert step.repair.answers == 4 and step.repair.permutations == 4


async def test_a_list_too_long_for_the_context_has_its_feature_text_cut_first() -> None:
    raw = sample_requests(1, seed=9, prefix="cut", candidates=12)[0]
    for c in raw["candidates"]:
        c["features"]["title"] = "A very long title that goes on and on " * 6
    request = parse_request(json.dumps(raw))
    policy = LLMPolicy(ScriptedChat([]), default_prompts(), options=LLMOptions())
    full = policy._needed(_ask(request), None, 0)
    cut = policy._needed(_ask(request), None, 1)
    assert cut < full
    outcome, chat = await run(request, [js(list(range(1, 13)), "stop")], context_tokens=cut + 50)
    assert len(chat.requests) == 1 and outcome.status == "ok"
    assert "feature text cut to 48 characters" in outcome.steps[0].notes[0]
    assert prompt_tokens(EstimateCounter(), chat.requests[0]["messages"]) < cut + 50


def _ask(request):
    from worker.engine.steps import NodeAsk

    return NodeAsk(
        request, plan_walk(request, max_steps=3), "accuracy", 1, (), ("accuracy", "stop"), (), 3, 1e18
    )


async def test_the_keys_shape_names_every_candidate_once() -> None:
    request = make_request(6, n=5)
    answer = json.dumps({"positions": {"1": 2, "2": 1, "3": 2, "4": 5, "5": 4}, "next_node": "stop"})
    outcome, chat = await run(request, [answer], shape="keys", max_repair_share=0.5)
    schema = chat.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["positions"]["required"] == ["1", "2", "3", "4", "5"]
    assert '"positions"' in chat.requests[0]["messages"][0]["content"]
    item = ids(request)
    assert outcome.ranking == [item[1], item[0], item[2], item[4], item[3]]
    assert outcome.steps[0].repair.ties == 1 and outcome.steps[0].repair.permutations == 0


def test_keys_answers_parse_to_a_permutation_with_ties_counted() -> None:
    parsed = parse_answer(
        '{"positions": {"a": 1, "b": 1, "c": 3}, "next_node": "stop"}',
        candidates=["a", "b", "c"],
        previous=["b", "a", "c"],
        offered=("stop",),
        expect_ranking=True,
        aliases=False,
        max_repair_share=0.5,
    )
    assert parsed.ranking == ["b", "a", "c"] and parsed.repair.ties == 1


def test_the_estimate_is_not_below_the_real_tokenizer_on_prompts() -> None:
    """On rendered prompts of seeded requests (both prompt sets), the estimate errs high."""
    real = SentencePieceCounter(tokenizer_file())
    estimate = EstimateCounter()
    for prompts in ("default", "paper"):
        for raw in sample_requests(6, seed=31, prefix="tok", candidates=30):
            request = parse_request(json.dumps(raw))
            policy = LLMPolicy(ScriptedChat([]), default_prompts(prompts), options=LLMOptions())
            ask = _ask(request)
            messages = policy.session(ask).messages("accuracy", [("accuracy", ids(request))], ask.offered)
            for m in messages:
                assert estimate.count(m["content"]) >= real.count(m["content"]), prompts


KEYS = st.one_of(st.sampled_from(["1", "2", "3", "4", "5", "6", "0", "-1", "01", "x"]), st.text(max_size=4))
VALUES = st.one_of(
    st.integers(-3, 9),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@cases(300)
@given(st.dictionaries(KEYS, VALUES, max_size=8), st.floats(0, 1))
def test_hostile_keys_answers_give_a_permutation_or_a_problem(positions, share) -> None:
    candidates = ["m1", "m2", "m3", "m4", "m5", "m6"]
    raw = json.dumps({"positions": positions, "next_node": "stop"})
    parsed = parse_answer(
        raw,
        candidates=candidates,
        previous=candidates[::-1],
        offered=("stop",),
        expect_ranking=True,
        aliases=True,
        max_repair_share=share,
    )
    if parsed.ranking is None:
        assert parsed.problem
    else:
        assert sorted(parsed.ranking) == sorted(candidates)
        assert parsed.repair is not None and parsed.repair.share(6) <= share
