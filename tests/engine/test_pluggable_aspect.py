"""A new aspect node is a focus template plus a registry entry: the walk does not change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from engine_kit import example_requests

from worker.config import PACKAGED_PROMPTS
from worker.engine import nodes
from worker.engine.nodes import AspectNode, plan_walk
from worker.engine.prompts import PromptSet, SessionPrompts
from worker.engine.walk import walk
from worker.policies.heuristic import HeuristicPolicy


@pytest.fixture
def recency(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> PromptSet:
    entry = AspectNode("recency", True, ("recen", "latest"), "groups")
    monkeypatch.setitem(nodes.ASPECT_NODES, "recency", entry)
    shutil.copytree(PACKAGED_PROMPTS / "default", tmp_path / "default")
    (tmp_path / "default" / "nodes" / "recency.txt").write_text(
        "Favour recent candidates: keep $attribute groups ($groups) evenly placed.\n")
    return PromptSet.load(tmp_path, "default")


async def test_a_registered_aspect_is_offered_prompted_and_walked(recency: PromptSet) -> None:
    request = example_requests()[0].model_copy(update={"goal": "Focus on recency"})
    plan = plan_walk(request, default_aspects={"recency": {"attribute": "year", "split_at": 1996}})
    assert "recency" in plan.aspect_names
    focus = SessionPrompts(recency, request, plan, True).focus("recency")
    assert focus == "Favour recent candidates: keep year groups (below 1996; 1996 and above) evenly placed."

    outcome = await walk(request, HeuristicPolicy(), plan)
    assert outcome.path == ["accuracy", "recency", "stop"]
    assert "recency" in outcome.steps[0].offered
    assert sorted(outcome.ranking) == sorted(c.item_id for c in request.candidates)
    assert outcome.steps[1].ranking != outcome.steps[0].ranking  # its reranker did something
