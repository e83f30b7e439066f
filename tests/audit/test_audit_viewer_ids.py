"""Every stored request_id opens in the audit API and the viewer, also `.`, `..` and ids ending in
`/steps/1/calls` (a path cannot carry them: clients drop dot segments, and the calls route would
claim the suffix). Headless Chromium against `llm4rerank audit-api` as the read-only role."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from audit_helpers import TOKEN, Process, make_requests, reader_statements, rerank_into, start_sim

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
ODD_IDS = [".", "..", "x/steps/1/calls", "a b/../c?d#e", "%2e%2e"]


def test_odd_request_ids_open_in_the_api_and_the_viewer(fresh_database, pg_exec, tmp_path: Path) -> None:
    import httpx
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install_browser.sh` (make test does)")
    with fresh_database("llm4rerank_test_ids") as (name, url):
        pg_exec(reader_statements(name), database=name)
        requests = make_requests(len(ODD_IDS) + 1, prefix="ids")
        for request, rid in zip(requests, [*ODD_IDS, "x"], strict=True):
            request["request_id"] = rid
        sim = start_sim(tmp_path / "sim", "--seed", "3")
        try:
            done = rerank_into(url, requests, tmp_path, sim)
        finally:
            sim.stop()
        assert done.returncode == 0, done.stderr[-2000:]
        env = {**os.environ, "LLM4RERANK_DATABASE_URL": url, "LLM4RERANK_AUDIT_TOKENS": TOKEN}
        env.pop("LLM4RERANK_READER_DATABASE_URL", None)
        server = Process(["audit-api"], "/healthz", tmp_path / "audit-api.log", env=env)
        try:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            steps = {}
            for rid in ODD_IDS:
                r = httpx.get(f"{server.url}/api/session", params={"request_id": rid}, headers=auth)
                assert r.status_code == 200 and r.json()["request_id"] == rid, (rid, r.text[:200])
                steps[rid] = len(r.json()["steps"])
                calls = httpx.get(
                    f"{server.url}/api/session", params={"request_id": rid, "step": 1}, headers=auth
                )
                assert calls.status_code == 200 and calls.json()["calls"], rid
            # the path form still serves the session whose id ends in /steps/1/calls
            r = httpx.get(f"{server.url}/api/sessions/x/steps/1/calls", headers=auth)
            assert r.status_code == 200 and r.json()["step"] == 1 and r.json()["request_id"] == "x"

            with sync_playwright() as p:
                context = p.chromium.launch_persistent_context(
                    str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS
                )
                try:
                    page = context.new_page()
                    page.goto(server.url + "/")
                    page.fill("#token", TOKEN)
                    page.click("#token-form button[type=submit]")
                    page.wait_for_selector("#results tbody tr")
                    for rid in ODD_IDS:
                        page.goto(f"{server.url}/#session={quote(rid, safe='')}")
                        page.reload()
                        page.wait_for_function(
                            "rid => document.getElementById('session').dataset.requestId === rid", arg=rid
                        )
                        assert page.locator("#steps article.step").count() == steps[rid], rid
                        card = page.locator("#steps article.step").first
                        card.locator("button.show-calls").click()
                        card.locator("pre.answer").first.wait_for()
                finally:
                    context.close()
        finally:
            server.stop()
