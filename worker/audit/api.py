"""`llm4rerank audit-api`: a read-only HTTP API over the trace queries, and the trace viewer.

Security model, in layers: every /api/ route needs a bearer token from LLM4RERANK_AUDIT_TOKENS
(compared in constant time; with no token configured the server refuses to start); only GET and
HEAD exist (anything else is 405 on every path); the database is reached as a read-only role in
read-only transactions (see db.py); inputs are validated and bounded (page size at most 200) and
every value reaches SQL as a bound parameter. The viewer's static files and the OpenAPI document
carry no data and need no token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..engine.nodes import node_styles
from .filters import FilterError, check_limit, parse_filters
from .openapi import openapi_document
from .queries import TraceQueries
from .trace import upstream_of, with_lists

log = logging.getLogger(__name__)
VIEWER = Path(__file__).resolve().parent / "viewer"
READ_METHODS = ("GET", "HEAD")
LIST_PARAMS = {
    "request_id",
    "since",
    "until",
    "user",
    "status",
    "node",
    "goal",
    "model",
    "prompt_version",
    "item",
    "top_k",
    "replay_of",
    "replays",
    "limit",
    "cursor",
    "order",
}
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; "
        b"img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        b"frame-ancestors 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dump_json(content)


def dump_json(content: Any) -> bytes:
    """orjson, or the standard library for what orjson refuses: integers beyond 64 bits, which
    JSONB gives back for a number such as 1e30 in a stored request."""
    try:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(content, default=_iso, ensure_ascii=False).encode("utf-8", "backslashreplace")


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"error": code, "message": message}, status_code=status, headers=headers)


class TokenCheck:
    """Constant-time comparison against every configured token (digests, so lengths leak nothing)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens if t]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def valid(self, header: str | None) -> bool:
        if not header or not header[:7].lower() == "bearer ":
            return False
        given = hashlib.sha256(header[7:].strip().encode()).digest()
        ok = False
        for digest in self._digests:
            ok |= hmac.compare_digest(given, digest)
        return ok


class Guard:
    """ASGI middleware: security headers everywhere, 401 before any /api/ data, 405 for writes."""

    def __init__(self, app: ASGIApp, tokens: TokenCheck) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if scope["path"].startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        path: str = scope["path"]
        if path.startswith("/api/") or path == "/api":
            auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not self.tokens.valid(auth):
                response = error(
                    401,
                    "unauthorized",
                    "a valid bearer token is required",
                    {"www-authenticate": 'Bearer realm="llm4rerank-audit"'},
                )
                await response(scope, receive, send_with_headers)
                return
        if scope["method"] not in READ_METHODS:
            response = error(
                405, "method_not_allowed", "the audit API is read-only", {"allow": ", ".join(READ_METHODS)}
            )
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _single(params: QueryParams, allowed: set[str]) -> dict[str, str]:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise FilterError(f"unknown query parameter(s): {', '.join(unknown)}")
    out = {}
    for key in params:
        values = params.getlist(key)
        if key != "request_id" and len(values) > 1:
            raise FilterError(f"{key}: given more than once")
        out[key] = values[-1]
    return out


MIN_TOKEN_CHARS = 16


def _int(value: str | None, name: str) -> int | None:
    """ASCII digits only: str.isdigit() also takes '²' and other digits int() refuses."""
    if value is None:
        return None
    if not (value.isascii() and value.isdecimal()) or len(value) > 6:
        raise FilterError(f"{name}: expected a positive integer")
    return int(value)


def check_tokens(tokens: Sequence[str]) -> None:
    """Refuse to serve with no token or a short (guessable) one; the message names the setting."""
    from ..errors import ConfigError

    if not [t for t in tokens if t]:
        raise ConfigError("no audit tokens: set LLM4RERANK_AUDIT_TOKENS (comma-separated bearer tokens)")
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise ConfigError(
            f"LLM4RERANK_AUDIT_TOKENS: {len(short)} token(s) shorter than "
            f"{MIN_TOKEN_CHARS} characters; use long random tokens"
        )


def create_app(engine: AsyncEngine, tokens: Sequence[str]) -> ASGIApp:
    """The ASGI app; `engine` should be read-only (db.read_only_engine)."""
    check_tokens(tokens)
    check = TokenCheck(tokens)
    queries = TraceQueries(engine)

    async def list_sessions(request: Request) -> Response:
        try:
            p = _single(request.query_params, LIST_PARAMS)
            order = p.pop("order", "desc")
            if order not in ("asc", "desc"):
                raise FilterError("order: asc or desc")
            limit = check_limit(_int(p.pop("limit", None), "limit"))
            cursor = p.pop("cursor", None)
            ids = tuple(request.query_params.getlist("request_id"))
            p.pop("request_id", None)
            top_k = _int(p.pop("top_k", None), "top_k")
            filters = parse_filters(request_ids=ids, top_k=top_k, **p)
            page = await queries.list(filters, limit=limit, cursor=cursor, order=order)  # type: ignore[arg-type]
        except FilterError as exc:
            return error(400, "bad_request", str(exc))
        return JSON({"items": page.items, "next_cursor": page.next_cursor, "limit": limit})

    async def session_response(request_id: str) -> Response:
        if not 1 <= len(request_id) <= 256:
            return error(400, "bad_request", "request_id: 1 to 256 characters")
        data = await queries.session(request_id)
        if data is None:
            return error(404, "not_found", f"no session {request_id!r}")
        req = data.get("request") or {}
        data["upstream"] = upstream_of(req)
        data["steps"] = with_lists(req, data["steps"])
        return JSON(data)

    async def calls_response(request_id: str, step: int) -> Response:
        if not 1 <= len(request_id) <= 256:
            return error(400, "bad_request", "request_id: 1 to 256 characters")
        if not 0 < step < 10_000:
            return error(400, "bad_request", "step: between 1 and 9999")
        calls = await queries.step_calls(request_id, step)
        if calls is None:
            return error(404, "not_found", f"no step {step} in session {request_id!r}")
        return JSON({"request_id": request_id, "step": step, "calls": calls})

    async def get_session(request: Request) -> Response:
        try:
            _single(request.query_params, set())
        except FilterError as exc:
            return error(400, "bad_request", str(exc))
        return await session_response(request.path_params["request_id"])

    async def get_calls(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        step = request.path_params["step"]
        response = await calls_response(request_id, step)
        if response.status_code == 404:  # a request_id that itself ends in /steps/N/calls
            whole = f"{request_id}/steps/{step}/calls"
            if await queries.session(whole) is not None:
                return await session_response(whole)
        return response

    async def get_session_by_query(request: Request) -> Response:
        """Every request_id, also `.`, `..` or one ending in /steps/1/calls, which paths cannot
        carry unambiguously (clients remove dot segments)."""
        try:
            p = _single(request.query_params, {"request_id", "step"})
            if "request_id" not in p:
                raise FilterError("request_id: required")
            step = _int(p.get("step"), "step")
        except FilterError as exc:
            return error(400, "bad_request", str(exc))
        if step is not None:
            return await calls_response(p["request_id"], step)
        return await session_response(p["request_id"])

    async def openapi(request: Request) -> Response:
        return JSON(openapi_document())

    async def list_nodes(request: Request) -> Response:
        """The node registry's names, short labels and colours, so the viewer hard-codes none."""
        return JSON({"nodes": node_styles()})

    async def health(request: Request) -> Response:
        return JSON({"status": "ok"})

    async def index(request: Request) -> Response:
        return FileResponse(VIEWER / "index.html", media_type="text/html")

    async def db_error(request: Request, exc: Exception) -> Response:
        log.warning("audit query failed: %s", exc)
        return error(503, "database_unavailable", "the trace store could not be read; try again")

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/api/nodes", list_nodes, methods=["GET"]),
        Route("/api/sessions", list_sessions, methods=["GET"]),
        Route("/api/session", get_session_by_query, methods=["GET"]),
        # request ids may contain "/": the calls route comes first so its suffix wins
        Route("/api/sessions/{request_id:path}/steps/{step:int}/calls", get_calls, methods=["GET"]),
        Route("/api/sessions/{request_id:path}", get_session, methods=["GET"]),
        Mount("/viewer", StaticFiles(directory=VIEWER), name="viewer"),
    ]
    app = Starlette(routes=routes, exception_handlers={SQLAlchemyError: db_error, OSError: db_error})
    return Guard(app, check)


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
