"""A new aspect node is a focus template plus a registry entry: the walk does not change, and
the parser, sim-llm's malformed answers, `trace list` and the viewer (through /api/nodes) name it
from the registry."""

from __future__ import annotations

import random
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from engine_kit import example_requests
from typer.testing import CliRunner

from worker.cli import app
from worker.config import PACKAGED_PROMPTS
from worker.engine import nodes
from worker.engine.nodes import AspectNode, plan_walk, short_label
from worker.engine.parse import match_node
from worker.engine.prompts import PromptSet, SessionPrompts
from worker.engine.walk import walk
from worker.policies.heuristic import HeuristicPolicy

SHORT, COLOUR = "Y", "#0d9488"  # not the name's first letter: the label must come from the entry
TOKEN = "pluggable-aspect-test-token-0123456789"
ASPECTS = '{"recency": {"attribute": "year", "split_at": 1996}}'


@pytest.fixture
def recency(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> PromptSet:
    entry = AspectNode("recency", True, ("recen", "latest"), "groups", SHORT, COLOUR)
    monkeypatch.setitem(nodes.ASPECT_NODES, "recency", entry)
    shutil.copytree(PACKAGED_PROMPTS / "default", tmp_path / "default")
    (tmp_path / "default" / "nodes" / "recency.txt").write_text(
        "Favour recent candidates: keep $attribute groups ($groups) evenly placed.\n"
    )
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


def test_the_registry_names_the_node_for_the_parser_and_sim_llm(recency: PromptSet) -> None:
    from worker.simllm.faults import malform

    assert short_label("recency") == SHORT and short_label("unheard-of") == "?"
    notes: list[str] = []
    assert match_node("Recency node", ("accuracy", "stop"), notes) is None
    assert notes == ["next node 'recency' is not on offer"]
    rng = random.Random(0)
    cased = {malform('{"next": "recency"}', rng) for _ in range(200)}
    assert '{"next": "RECENCY."}' in cased  # the "case" fault covers the new name too


@pytest.fixture
def recency_store(recency: PromptSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite trace store holding one heuristic walk through the new node (`rerank --store`)."""
    monkeypatch.setenv("LLM4RERANK_PROMPTS_DIR", str(tmp_path))
    monkeypatch.setenv("LLM4RERANK_ASPECTS", ASPECTS)
    request = example_requests()[0].model_copy(update={"goal": "Focus on recency"})
    source = tmp_path / "requests.jsonl"
    source.write_bytes(orjson.dumps(request.model_dump(mode="json", exclude_none=True)) + b"\n")
    url = f"sqlite+aiosqlite:///{tmp_path / 'traces.db'}"
    result = CliRunner().invoke(
        app,
        [
            "rerank",
            str(source),
            "--policy",
            "heuristic",
            "--store",
            url,
            "--out",
            str(tmp_path / "results.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    stored = orjson.loads((tmp_path / "results.jsonl").read_bytes())
    assert stored["path"] == ["accuracy", "recency", "stop"]
    return url


def test_a_registered_aspect_shows_in_trace_list(recency_store: str) -> None:
    result = CliRunner().invoke(app, ["trace", "list", "--db", recency_store, "--node", "recency"])
    assert result.exit_code == 0, result.output
    assert f" A{SHORT}S " in result.output
    assert "?" not in result.output


@pytest.fixture
def audit_server(recency_store: str) -> Iterator[str]:
    """The audit API over the store, in this process (so it sees the registry entry)."""
    import uvicorn

    from worker.audit.api import create_app
    from worker.audit.db import read_only_engine

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(read_only_engine(recency_store), [TOKEN]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the audit API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_a_registered_aspect_is_served_by_the_audit_api(audit_server: str) -> None:
    import httpx

    response = httpx.get(f"{audit_server}/api/nodes", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    served = response.json()["nodes"]
    assert [n["name"] for n in served] == list(nodes.node_names())
    assert {"name": "recency", "kind": "aspect", "short": SHORT, "colour": COLOUR} in served
    spec = httpx.get(f"{audit_server}/openapi.json").json()
    node_param = next(p for p in spec["paths"]["/api/sessions"]["get"]["parameters"] if p["name"] == "node")
    assert "recency" in node_param["schema"]["enum"]


@pytest.mark.integration
def test_a_registered_aspect_shows_in_the_viewer(audit_server: str, tmp_path: Path) -> None:
    """Headless Chromium: the node filter, the path column and the path's colours come from the API."""
    import os

    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("LLM4RERANK_TEST_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        pytest.fail(f"{chromium} is missing: run `bash scripts/install_browser.sh` (make test does)")
    errors: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(audit_server + "/")
            page.fill("#token", TOKEN)
            page.click("#token-form button[type=submit]")
            page.wait_for_selector("#results tbody tr")
            options = page.locator("#node-select option").all_text_contents()
            assert options == ["any", *nodes.node_names()]
            assert page.locator("#results tbody tr td.mono").all_text_contents() == [f"A{SHORT}S"]
            page.click("#results tbody tr button.link")
            page.wait_for_selector("#path .path-node[data-node=recency]")
            fill = page.get_attribute("#path .path-node[data-node=recency] rect", "fill")
            assert fill == COLOUR
        finally:
            context.close()
    assert errors == []
