"""The audit API over real PostgreSQL as the read-only role: no token no data, no writes (neither
through the API nor through the role), validated and bounded inputs, cursor paging."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from audit_helpers import TOKEN
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from worker.audit.api import create_app
from worker.audit.db import read_only_engine
from worker.errors import ConfigError
from worker.store.store import make_engine

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(populated: Any) -> AsyncIterator[httpx.AsyncClient]:
    engine = read_only_engine(populated.db.reader_url)
    app = create_app(engine, [TOKEN, "second-token-0123456789"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit") as c:
        yield c
    await engine.dispose()


async def test_no_valid_token_no_data(client: httpx.AsyncClient, populated: Any) -> None:
    rid = populated.request_ids[0]
    for path in ("/api/sessions", f"/api/sessions/{rid}", f"/api/sessions/{rid}/steps/1/calls", "/api/x"):
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": "Bearer "},
        ):
            r = await client.get(path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert rid not in r.text and "items" not in r.json()
    second = await client.get("/api/sessions", headers={"Authorization": "bearer second-token-0123456789"})
    assert second.status_code == 200
    assert (await client.get("/api/sessions", headers=AUTH)).status_code == 200


async def test_nothing_can_write(client: httpx.AsyncClient, populated: Any) -> None:
    rid = populated.request_ids[0]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/api/sessions", f"/api/sessions/{rid}", "/", "/viewer/app.js", "/openapi.json"):
            r = await client.request(method, path, headers=AUTH, json={"status": "failed"})
            assert r.status_code == 405, (method, path)
        unauthenticated = await client.request(method, "/api/sessions", json={})
        assert unauthenticated.status_code == 401
    r = await client.get(f"/api/sessions/{rid}", headers=AUTH)
    assert r.json()["status"] == "ok"


async def test_the_reader_role_cannot_write(populated: Any) -> None:
    """Even a plain connection as the reader (no read-only session settings) cannot write."""
    engine = make_engine(populated.db.reader_url)
    try:
        with pytest.raises(DBAPIError, match="read-only transaction"):
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE sessions SET status = 'failed'"))
        with pytest.raises(DBAPIError, match="permission denied"):
            async with engine.begin() as conn:
                await conn.execute(text("SET TRANSACTION READ WRITE"))
                await conn.execute(text("DELETE FROM steps"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM sessions"))).scalar_one() >= 300
    finally:
        await engine.dispose()


async def test_inputs_are_validated(client: httpx.AsyncClient) -> None:
    bad = [
        "limit=0",
        "limit=201",
        "limit=abc",
        "status=weird",
        "node=teleport",
        "top_k=5",
        "item=x&top_k=0",
        "since=yesterday",
        "cursor=garbage",
        "order=sideways",
        "unknown=1",
        "user=a&user=b",
        "user=" + "x" * 300,
        "replays=maybe",
        "limit=99999999999",
    ]
    for query in bad:
        r = await client.get(f"/api/sessions?{query}", headers=AUTH)
        assert r.status_code == 400, query
        assert r.json()["error"] == "bad_request" and r.json()["message"]
    r = await client.get("/api/sessions?limit=200", headers=AUTH)
    assert r.status_code == 200 and len(r.json()["items"]) == 200
    injection = await client.get(
        "/api/sessions", params={"user": "x' OR '1'='1", "goal": "%' --"}, headers=AUTH
    )
    assert injection.status_code == 200 and injection.json()["items"] == []
    assert (await client.get("/api/sessions/nope", headers=AUTH)).status_code == 404
    assert (await client.get("/api/sessions/nope/steps/1/calls", headers=AUTH)).status_code == 404


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


async def test_every_bad_parameter_is_a_400_naming_it(client: httpx.AsyncClient) -> None:
    """Unicode digits are not digits; times and cursors outside what the store can compare are
    refused before any query (they gave 500 and 503 before)."""
    cases = {
        "limit=²": "limit",
        "limit=٣": "limit",
        "item=x&top_k=³": "top_k",
        "top_k=１": "top_k",
        "since=0001-01-01T00:00:00%2B14:00": "since",
        "until=9999-12-31T23:59:59-14:00": "until",
        "cursor=" + _cursor(["2026-01-01T00:00:00+00:00", 2**64 - 1, "desc"]): "cursor",
        "cursor=" + _cursor(["2026-01-01T00:00:00+00:00", True, "desc"]): "cursor",
        "cursor=" + _cursor(["0001-01-01T00:00:00+14:00", 1, "desc"]): "cursor",
        "cursor=" + _cursor([1, 1, "desc"]): "cursor",
    }
    for query, name in cases.items():
        r = await client.get(f"/api/sessions?{query}", headers=AUTH)
        assert r.status_code == 400, (query, r.text)
        assert r.json()["message"].startswith(name), (query, r.json())
    for params in ({"request_id": "x", "step": "²"}, {"step": "1"}, {"request_id": "x" * 257}):
        r = await client.get("/api/session", params=params, headers=AUTH)
        assert r.status_code == 400, params


def test_short_tokens_refuse_to_start() -> None:
    engine = read_only_engine("sqlite+aiosqlite:///:memory:")
    for tokens in (["x"], ["a" * 15], [TOKEN, "short"]):
        with pytest.raises(ConfigError, match="16 characters"):
            create_app(engine, tokens)
    create_app(engine, ["a" * 16])


async def test_paging_filters_and_detail(client: httpx.AsyncClient, populated: Any) -> None:
    seen: list[str] = []
    received: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 64, "replays": "exclude", "order": "asc"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/sessions", params=params, headers=AUTH)).json()
        seen += [s["request_id"] for s in page["items"]]
        received += [s["received_at"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(populated.request_ids)
    assert [datetime.fromisoformat(t) for t in received] == sorted(
        datetime.fromisoformat(t) for t in received
    ), "pages are not in ascending receipt order"
    assert datetime.fromisoformat(received[0]) < datetime.fromisoformat(received[-1]), (
        "all sessions share one receipt time: the order check above could not fail"
    )
    assert len(seen) == len(set(seen)) == len(populated.request_ids)

    rid = populated.request_ids[3]
    detail = (await client.get(f"/api/sessions/{rid}", headers=AUTH)).json()
    assert detail["request_id"] == rid and detail["request"]["request_id"] == rid
    assert [s["node"] for s in detail["steps"]] == detail["path"]
    assert detail["steps"][-1]["after"] == detail["final_ranking"]
    assert detail["steps"][0]["before"] == detail["upstream"]
    assert all("calls" not in s for s in detail["steps"]) and detail["steps"][0]["call_count"] >= 1
    calls = (await client.get(f"/api/sessions/{rid}/steps/1/calls", headers=AUTH)).json()["calls"]
    assert calls[0]["raw"] and calls[0]["messages"][0]["role"] == "system"

    by_user = (
        await client.get("/api/sessions", params={"user": detail["user_id"], "limit": 200}, headers=AUTH)
    ).json()["items"]
    assert by_user and all(s["user_id"] == detail["user_id"] for s in by_user)
    top = detail["final_ranking"][0]
    by_item = (
        await client.get("/api/sessions", params={"item": top, "top_k": 1, "limit": 200}, headers=AUTH)
    ).json()["items"]
    assert rid in {s["request_id"] for s in by_item} and all(s["final_ranking"][0] == top for s in by_item)
    by_node = (
        await client.get("/api/sessions", params={"node": "fairness", "limit": 200}, headers=AUTH)
    ).json()["items"]
    assert by_node and all("fairness" in s["path"] for s in by_node)
    assert r"request_ids" not in detail


async def _pages(client: httpx.AsyncClient, **filters: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, "replays": "exclude", **filters}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/sessions", params=params, headers=AUTH)).json()
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def test_the_node_filter_pages_every_visiting_session_in_order(client: httpx.AsyncClient) -> None:
    """PostgreSQL answers the node filter by a semi-join over the steps' (node, time, session)
    index (migration 0010): small pages of it, alone and with a time range, give exactly the
    sessions whose path holds the node, newest first, each once."""
    every = await _pages(client)
    middle = sorted(s["received_at"] for s in every)[len(every) // 2]
    visited = {node for s in every for node in s["path"]}
    assert {"accuracy", "stop"} <= visited
    for node in sorted(visited):
        for since in (None, middle):
            extra = {"since": since} if since else {}
            got = await _pages(client, node=node, **extra)
            want = [s for s in every if node in s["path"] and (since is None or s["received_at"] >= since)]
            assert [s["request_id"] for s in got] == [s["request_id"] for s in want], (node, since)


async def test_openapi_and_viewer_need_no_token_and_carry_no_data(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    routes = {"/api/sessions", "/api/sessions/{request_id}", "/api/sessions/{request_id}/steps/{step}/calls"}
    assert routes <= set(spec["paths"])
    limit = next(p for p in spec["paths"]["/api/sessions"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 200
    page = await client.get("/")
    assert page.status_code == 200 and "trace viewer" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert (await client.get("/viewer/app.js")).status_code == 200
    assert (await client.get("/healthz")).json() == {"status": "ok"}


def test_no_tokens_configured_refuses_to_start() -> None:
    engine = read_only_engine("sqlite+aiosqlite:///:memory:")
    with pytest.raises(ConfigError, match="LLM4RERANK_AUDIT_TOKENS"):
        create_app(engine, [])
    with pytest.raises(ConfigError):
        create_app(engine, ["", ""])
