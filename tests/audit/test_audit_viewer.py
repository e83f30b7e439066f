"""The trace viewer in a real headless browser (Debian's chromium driven by Playwright), served by
`llm4rerank audit-api` connecting as the read-only role: log in, search, open a session, and
check the path and the rank chart against the stored data. Keeps artifacts/viewer.png."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import TOKEN, Process

from worker.audit.db import read_only_engine
from worker.audit.filters import TraceFilters
from worker.audit.queries import TraceQueries
from worker.audit.trace import with_lists

pytestmark = pytest.mark.integration
CHROMIUM = os.environ.get("LLM4RERANK_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def _richest_session(url: str, ids: list[str]) -> dict[str, Any]:
    """The stored session with the longest path (more steps make a better chart), with calls."""
    engine = read_only_engine(url)
    try:
        queries = TraceQueries(engine)
        found = [s async for s in queries.iterate(TraceFilters(request_ids=tuple(ids)))]
        best = max(found, key=lambda s: (len(s["path"] or []), s["request_id"]))
        data = await queries.session(best["request_id"], with_calls=True)
        assert data is not None
        return data
    finally:
        await engine.dispose()


@pytest.fixture
def audit_api(populated: Any, tmp_path: Path) -> Any:
    """`llm4rerank audit-api` as a child process; the reader URL comes from the fallback
    (the database URL with the user llm4rerank_reader)."""
    env = {**os.environ, "LLM4RERANK_DATABASE_URL": populated.db.url, "LLM4RERANK_AUDIT_TOKENS": TOKEN}
    env.pop("LLM4RERANK_READER_DATABASE_URL", None)
    server = Process(["audit-api"], "/healthz", tmp_path / "audit-api.log", env=env)
    yield server
    server.stop()


def test_viewer_draws_the_stored_walk(
    audit_api: Any, populated: Any, tmp_path: Path, artifacts: Path
) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install_browser.sh` (make test does)")
    session = asyncio.run(_richest_session(populated.db.url, populated.request_ids))
    rid = session["request_id"]
    steps = with_lists(session["request"], session["steps"])
    upstream = [c["item_id"] for c in session["request"]["candidates"]]
    errors: list[str] = []

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(audit_api.url + "/")

            page.fill("#token", "not-the-token")
            page.click("#token-form button[type=submit]")
            page.wait_for_selector("#login-message:has-text('refused')")
            errors.clear()  # the refused token's 401 is logged by the browser, as it should be

            page.fill("#token", TOKEN)
            page.click("#token-form button[type=submit]")
            page.wait_for_selector("#results tbody tr")
            page.fill("#search input[name=request_id]", rid)
            page.click("#search-button")
            page.wait_for_selector(f"#results tbody tr >> nth=0 >> text={rid}")
            assert page.locator("#results tbody tr").count() == 1
            page.click(f"button[data-request-id='{rid}']")

            page.wait_for_selector("#path .path-node")
            assert page.get_attribute("#path", "data-path") == ",".join(session["path"])
            labels = page.locator("#path .path-node text").all_text_contents()
            assert labels == [f"{i + 1}. {n}" for i, n in enumerate(session["path"])]

            assert page.get_attribute("#chart", "data-columns") == ",".join(
                ["upstream", *(s["node"] for s in steps)]
            )
            lines = page.locator("#chart .item-line")
            assert lines.count() == len(upstream)
            drawn = {
                lines.nth(i).get_attribute("data-item"): lines.nth(i).get_attribute("data-ranks")
                for i in range(lines.count())
            }
            for item in upstream:
                want = [upstream.index(item) + 1] + [s["after"].index(item) + 1 for s in steps]
                assert drawn[item] == ",".join(map(str, want)), item
            points = page.eval_on_selector_all(
                "#chart .item-line polyline", "ps => ps.map(p => p.points.numberOfItems)"
            )
            assert points == [len(steps) + 1] * len(upstream)

            cards = page.locator("#steps article.step")
            assert cards.count() == len(steps)
            first = next(s for s in session["steps"] if s["calls"])
            card = page.locator(f"#steps article.step[data-step='{first['step']}']")
            card.locator("button.show-calls").click()
            card.locator("pre.answer").first.wait_for()
            assert card.locator("pre.answer").first.text_content() == first["calls"][0]["raw"]
            assert session["goal"] in page.locator("#session-facts").text_content()

            artifacts.mkdir(exist_ok=True)
            page.locator("#chart").hover(position={"x": 160, "y": 60})
            page.screenshot(path=str(artifacts / "viewer.png"), full_page=True)
        finally:
            context.close()
    assert not errors, errors
    assert (artifacts / "viewer.png").stat().st_size > 10_000
