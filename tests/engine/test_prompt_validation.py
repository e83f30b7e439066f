"""Prompt sets are package data (worker.prompts, the repository's prompts/) validated at load: a
missing template, an unknown placeholder or a missing one fails at load, naming the file."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest

from worker.config import PACKAGED_PROMPTS, Settings
from worker.engine.nodes import ASPECT_NODES, BACKWARD
from worker.engine.prompts import PromptSet
from worker.errors import ConfigError

SETS = ("default", "paper")


def copy_set(tmp_path: Path, name: str = "default") -> Path:
    shutil.copytree(PACKAGED_PROMPTS / name, tmp_path / name)
    return tmp_path / name


def test_the_prompts_are_found_through_importlib_resources() -> None:
    packaged = Path(str(resources.files("worker.prompts")))
    assert PACKAGED_PROMPTS == packaged == Settings().prompts_dir
    assert {p.name for p in packaged.iterdir() if (p / "manifest.json").is_file()} >= set(SETS)


@pytest.mark.parametrize("name", SETS)
def test_every_registered_node_has_its_template_in_the_shipped_sets(name: str) -> None:
    prompts = PromptSet.load(PACKAGED_PROMPTS, name)
    assert all(prompts.has_node(node) for node in (*ASPECT_NODES, BACKWARD))


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize(
    "file", ["nodes/fairness.txt", f"nodes/{BACKWARD}.txt", "step.txt", "candidate.txt", "reask.txt"]
)
def test_a_missing_template_fails_at_load_naming_the_file(tmp_path: Path, name: str, file: str) -> None:
    folder = copy_set(tmp_path, name)
    (folder / file).unlink()
    with pytest.raises(ConfigError) as info:
        PromptSet.load(tmp_path, name)
    assert f"{folder / file} is missing" in str(info.value)


def test_a_registered_node_without_a_template_fails_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.engine import nodes

    folder = copy_set(tmp_path)
    monkeypatch.setitem(
        nodes.ASPECT_NODES, "recency", nodes.AspectNode("recency", True, ("recen",), "groups")
    )
    with pytest.raises(ConfigError, match=r"recency\.txt is missing") as info:
        PromptSet.load(tmp_path, "default")
    assert str(folder / "nodes" / "recency.txt") in str(info.value)


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("nodes/diversity.txt", "Spread $attribute over $colour."),
        ("pool_line.txt", "$step. $node: $ranking ($score)"),
        ("nodes/accuracy.txt", "Rank by ${relevance}."),
        ("system.txt", "Goal: $goal $user $candidates $format $request_id"),
        ("format_json.txt", "Answer with $shape."),
    ],
)
def test_an_unknown_placeholder_fails_at_load_naming_the_file(tmp_path: Path, file: str, text: str) -> None:
    folder = copy_set(tmp_path)
    (folder / file).write_text(text + "\n")
    with pytest.raises(ConfigError, match="unknown placeholder") as info:
        PromptSet.load(tmp_path, "default")
    assert str(folder / file) in str(info.value)


@pytest.mark.parametrize(
    ("file", "placeholder"),
    [
        ("candidate.txt", "features"),
        ("candidate.txt", "alias"),
        ("pool_line.txt", "ranking"),
        ("step.txt", "pool"),
        ("step.txt", "focus"),
        ("reask_node.txt", "offered"),
        ("nodes/diversity.txt", "attribute"),
    ],
)
def test_a_missing_placeholder_fails_at_load_naming_the_file(
    tmp_path: Path, file: str, placeholder: str
) -> None:
    folder = copy_set(tmp_path)
    path = folder / file
    text = path.read_text("utf-8")
    assert f"${placeholder}" in text
    path.write_text(text.replace(f"${placeholder}", placeholder), "utf-8")
    with pytest.raises(ConfigError, match=rf"placeholder \${placeholder} is missing") as info:
        PromptSet.load(tmp_path, "default")
    assert str(path) in str(info.value)


def test_the_request_must_reach_the_system_or_the_step_template(tmp_path: Path) -> None:
    folder = copy_set(tmp_path)
    system = folder / "system.txt"
    system.write_text(system.read_text("utf-8").replace("$goal", "the goal"), "utf-8")
    with pytest.raises(ConfigError, match=r"placeholder \$goal is missing from both") as info:
        PromptSet.load(tmp_path, "default")
    assert str(system) in str(info.value)


def test_a_stray_dollar_fails_at_load_naming_the_file(tmp_path: Path) -> None:
    folder = copy_set(tmp_path)
    (folder / "reask.txt").write_text("Costs $ 5: $problem\n")
    with pytest.raises(ConfigError, match="starts no placeholder") as info:
        PromptSet.load(tmp_path, "default")
    assert str(folder / "reask.txt") in str(info.value)
