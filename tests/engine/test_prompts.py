"""Prompt rendering: a byte-identical first message for prefix caching, aliases or item_ids,
and a prompt_version that follows the template files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from engine_kit import default_prompts, example_requests, ids, js, make_request, scripted_policy

from worker.config import PACKAGED_PROMPTS, Settings
from worker.engine.nodes import plan_walk
from worker.engine.prompts import PromptSet, SessionPrompts
from worker.engine.walk import walk
from worker.errors import ConfigError
from worker.policies.heuristic import HeuristicPolicy

N = 20
PERM = list(range(1, N + 1))


async def long_session(prompts: str = "default", structured: bool = True):
    """accuracy -> diversity -> backward -> fairness (garbage, then a re-ask) -> stop."""
    request = example_requests()[0]
    item = ids(request)
    as_labels = (lambda p: p) if prompts == "default" else (lambda p: [item[i - 1] for i in p])
    text = (
        (lambda r, n: js(as_labels(r), n))
        if structured
        else (lambda r, n: f"[{', '.join(map(str, as_labels(r)))}]; {n}")
    )
    script = [
        text(PERM, "diversity"),
        text(PERM[::-1], "backward"),
        js(None, "fairness") if structured else "fairness",
        "I cannot do that.",
        text(PERM[1:] + PERM[:1], "stop"),
    ]
    policy, chat = scripted_policy(script, prompts=prompts, structured=structured)
    outcome = await walk(request, policy, plan_walk(request), fallback=HeuristicPolicy())
    assert outcome.path == ["accuracy", "diversity", "backward", "fairness", "stop"]
    assert len(chat.requests) == 5
    return request, outcome, chat


@pytest.mark.parametrize("structured", [True, False])
async def test_first_message_is_byte_identical_across_steps(structured: bool) -> None:
    _, _, chat = await long_session("default", structured)
    firsts = [r["messages"][0] for r in chat.requests]
    assert firsts[0]["role"] == "system"
    assert all(m == firsts[0] for m in firsts)
    assert all(m["content"].encode() == firsts[0]["content"].encode() for m in firsts)
    # the re-ask continues the same conversation: system, user, the bad answer, the correction
    reask = chat.requests[4]["messages"]
    assert [m["role"] for m in reask] == ["system", "user", "assistant", "user"]
    assert reask[:2] == chat.requests[3]["messages"]
    assert reask[2]["content"] == "I cannot do that."
    assert "no list of candidates found" in reask[3]["content"]
    assert "1 to 20" in reask[3]["content"]


async def test_default_set_shows_aliases_and_no_item_ids() -> None:
    request, _, chat = await long_session("default")
    system = chat.requests[0]["messages"][0]["content"]
    assert "\nCandidates (number. score | " in system
    for alias, candidate in enumerate(request.candidates, start=1):
        assert f"\n{alias}. {candidate.score:.3g} | " in system
    for r in chat.requests:
        for message in r["messages"]:
            for item_id in ids(request):
                assert item_id not in message["content"]
    # the pool is one line per step with aliases
    assert f"1 accuracy: {','.join(map(str, PERM))}" in chat.requests[1]["messages"][1]["content"]
    after_backward = chat.requests[3]["messages"][1]["content"]  # fairness, after the drop
    assert f"\n1 accuracy: {','.join(map(str, PERM))}\n" in after_backward
    assert "2 diversity:" not in after_backward


async def test_paper_set_numbers_the_items() -> None:
    """The paper's templates name items by number too, so parsing never depends on item_ids."""
    request, _, chat = await long_session("paper")
    first = chat.requests[0]["messages"]
    assert [m["role"] for m in first] == ["user"]  # the paper's templates have no system part
    body = first[0]["content"]
    for alias in range(1, len(ids(request)) + 1):
        assert f"\nItem {alias}, features: " in body
    later = chat.requests[1]["messages"][0]["content"]
    assert f"Step 1, node accuracy, reranked list: {','.join(map(str, PERM))}" in later
    for item_id in ids(request):
        assert f'"{item_id}"' not in body
    assert "You are the Diversity node." in later and 'attribute "genre"' in later


async def test_every_prompt_carries_goal_focus_and_offered_nodes() -> None:
    request, _, chat = await long_session("default")
    focus_of = {
        n: (Path(Settings().prompts_dir) / "default" / "nodes" / f"{n}.txt").read_text().split("$")[0].strip()
        for n in ("accuracy", "diversity", "backward", "fairness")
    }
    expected = [(n, focus_of[n]) for n in ("accuracy", "diversity", "backward", "fairness", "fairness")]
    for r, (node, focus) in zip(chat.requests, expected, strict=True):
        system, user = r["messages"][0]["content"], r["messages"][1]["content"]
        assert f"Goal: {request.goal}" in system
        assert f"Node: {node}\n" in user and focus in user
        assert "\nNext: one of " in user
    assert "year (below 1996; 1996 and above)" in chat.requests[3]["messages"][1]["content"]


async def test_response_format_is_a_permutation_schema() -> None:
    _, _, chat = await long_session("default")
    fmt = chat.requests[0]["response_format"]
    assert fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    assert schema["required"] == ["ranking", "next_node"]
    assert schema["properties"]["ranking"]["items"] == {"type": "integer", "minimum": 1, "maximum": N}
    assert schema["properties"]["ranking"]["minItems"] == schema["properties"]["ranking"]["maxItems"] == N
    assert schema["properties"]["next_node"]["enum"] == [
        "accuracy",
        "diversity",
        "fairness",
        "backward",
        "stop",
    ]
    backward = chat.requests[2]["response_format"]["json_schema"]["schema"]
    assert backward["required"] == ["next_node"] and "ranking" not in backward["properties"]
    _, _, paper = await long_session("paper")
    items = paper.requests[0]["response_format"]["json_schema"]["schema"]["properties"]["ranking"]
    assert items["items"] == {"type": "integer", "minimum": 1, "maximum": N}


async def test_text_mode_sends_no_response_format_and_asks_for_the_text_form() -> None:
    _, _, chat = await long_session("default", structured=False)
    assert all(r["response_format"] is None for r in chat.requests)
    assert "Answer one line only" in chat.requests[0]["messages"][0]["content"]


def copy_prompts(tmp_path: Path) -> Path:
    root = tmp_path / "prompts"
    shutil.copytree(PACKAGED_PROMPTS, root)
    return root


@pytest.mark.parametrize(
    "file", ["default/system.txt", "default/nodes/fairness.txt", "default/manifest.json", "default/reask.txt"]
)
def test_prompt_version_follows_the_template_files(tmp_path: Path, file: str) -> None:
    root = copy_prompts(tmp_path)
    original = PromptSet.load(PACKAGED_PROMPTS, "default").version
    assert PromptSet.load(root, "default").version == original  # same bytes, same version
    assert original.startswith("default-")
    target = root / file
    before = target.read_text("utf-8")
    edited = before.replace("}", ', "note": 1}') if file.endswith(".json") else before + " Be brief."
    target.write_text(edited, "utf-8")
    changed = PromptSet.load(root, "default").version
    assert changed != original and changed.startswith("default-")
    assert PromptSet.load(root, "paper").version == PromptSet.load(PACKAGED_PROMPTS, "paper").version
    target.write_text(before, "utf-8")
    assert PromptSet.load(root, "default").version == original


def test_a_new_template_file_changes_the_version(tmp_path: Path) -> None:
    root = copy_prompts(tmp_path)
    original = PromptSet.load(root, "default").version
    (root / "default" / "nodes" / "serendipity.txt").write_text("Serendipity: surprise them.\n")
    assert PromptSet.load(root, "default").version != original


def test_unknown_prompt_set_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="LLM4RERANK_PROMPTS") as info:
        PromptSet.load(Settings().prompts_dir, "nope")
    assert "default" in str(info.value) and "paper" in str(info.value)


def test_the_constant_part_is_rendered_once_per_session() -> None:
    request = make_request(3)
    session = SessionPrompts(default_prompts(), request, plan_walk(request), structured=True)
    a = session.messages("accuracy", [], ("accuracy", "stop"))
    b = session.messages("fairness", [("accuracy", ids(request))], ("stop",))
    assert a[0] is not b[0] and a[0] == b[0]
    assert "(empty)" in a[1]["content"]
    assert "Nodes: accuracy, diversity, fairness;" in a[0]["content"]
