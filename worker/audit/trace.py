"""How a stored walk reads to a person: the list after every step, how items moved, and the text
forms `trace show` and `trace list` print. Pure functions of stored rows, so the CLI, the API
and the viewer describe a session the same way."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ..engine.nodes import BACKWARD, STOP, short_label
from ..engine.prompts import BREAKS

ARROW = " → "


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """Stored text made safe for a terminal: every control character (ESC, CR, LF, NUL, ...),
    line separator and bidi override is shown as a \\xNN / \\uNNNN escape."""
    return BREAKS.sub(_escape, text)


def _visible_tree(value: Any) -> Any:
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, list):
        return [_visible_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: (v if k == "calls" else _visible_tree(v)) for k, v in value.items()}
    return value


def upstream_of(request: dict[str, Any]) -> list[str]:
    return [str(c["item_id"]) for c in request.get("candidates", [])]


def with_lists(request: dict[str, Any], steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each step plus `before` (the list it started from) and `after` (the current list once it
    was taken: the latest pool entry, else the upstream order), replaying the pool's push/pop.

    A fallback walk restarts from an empty pool; it only runs when no LLM list was usable, so
    the pool is empty at that point anyway and one simulation covers both walks."""
    upstream = upstream_of(request)
    pool: list[list[str]] = []
    out = []
    for step in steps:
        before = pool[-1] if pool else upstream
        node, ranking = step.get("node"), step.get("ranking")
        if node == BACKWARD:
            if pool:
                pool.pop()
        elif node != STOP and ranking:
            pool.append(list(ranking))
        after = list(ranking) if node == STOP and ranking else (pool[-1] if pool else upstream)
        out.append({**step, "before": list(before), "after": list(after)})
    return out


def moves(before: Sequence[str], after: Sequence[str]) -> list[tuple[int, str, int | None]]:
    """(new rank, item, places moved up; None for an item not in `before`), ranks from 1."""
    where = {item: i for i, item in enumerate(before)}
    return [(i + 1, item, (where[item] - i) if item in where else None) for i, item in enumerate(after)]


def _delta(d: int | None) -> str:
    if d is None:
        return "new"
    return "=" if d == 0 else f"{d:+d}"


def format_list(before: Sequence[str], after: Sequence[str], width: int = 100, indent: str = "    ") -> str:
    parts = [f"{rank}:{item}({_delta(d)})" for rank, item, d in moves(before, after)]
    return textwrap.fill(
        " ".join(parts),
        width=width,
        initial_indent=indent,
        subsequent_indent=indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="milliseconds") if value else "-"


def _request_summary(request: dict[str, Any]) -> str:
    user = request.get("user", {})
    aspects = (
        ", ".join(
            f"{name}({a.get('attribute')}"
            + (f" split {a['split_at']}" if a.get("split_at") is not None else "")
            + ")"
            for name, a in (request.get("aspects") or {}).items()
        )
        or "deployment defaults"
    )
    options = ", ".join(f"{k}={v}" for k, v in (request.get("options") or {}).items() if v is not None)
    return (
        f"{len(request.get('candidates', []))} candidates, {len(user.get('history', []))} history "
        f"items, aspects: {aspects}" + (f", options: {options}" if options else "")
    )


def render_session(data: dict[str, Any], *, calls: bool = False) -> str:
    """The `trace show` text: a header, the path, then every step with its list and costs.
    Stored text is printed through `visible`, so nothing stored can drive the terminal."""
    data = _visible_tree(data)
    request = data.get("request") or {}
    lines = [
        f"session {data['request_id']}  status {data['status']}  model {data.get('model') or '-'}  "
        f"prompts {data.get('prompt_version') or '-'}  policy {data.get('policy') or '-'}",
        f"user {data['user_id']}  received {_when(data.get('received_at'))}  completed "
        f"{_when(data.get('completed_at'))}  latency {data.get('latency_ms') or 0} ms  "
        f"llm calls {data.get('llm_calls') or 0}  tokens {data.get('prompt_tokens') or 0}+"
        f"{data.get('completion_tokens') or 0}",
        f"goal: {data['goal']}",
        f"request: {_request_summary(request)}",
        f"path: {ARROW.join(data.get('path') or []) or '(not finished)'}",
    ]
    if data.get("replay_of"):
        lines.append(f"replay of: {data['replay_of']} ({data.get('replay_mode') or '?'})")
    if data.get("reason"):
        lines.append(f"reason: {data['reason']}")
    if data.get("attempts"):
        lines.append(
            f"taken up {data['attempts']} time(s) (resumes: {data['attempts'] - 1}), "
            f"crashes {data.get('crashes') or 0}; clock from "
            f"{_when(data.get('receipt_at') or data.get('received_at'))}"
        )
    upstream = upstream_of(request)
    for step in with_lists(request, data.get("steps") or []):
        lines.append("")
        lines.append(
            f"step {step['step']}  {step['node']}  (policy {step['policy']}; offered "
            f"{', '.join(step.get('offered') or []) or '-'}; pool size after "
            f"{step.get('pool_size', 0)})"
        )
        if step["node"] == BACKWARD:
            removed = step.get("removed")
            lines.append("  removed: " + (" ".join(removed) if removed else "(nothing: the pool was empty)"))
            lines.append("  current list is now:")
            lines.append(format_list(step["after"], step["after"]))
        elif step["node"] == STOP:
            lines.append("  final list (moves against the upstream order):")
            lines.append(format_list(upstream, step.get("ranking") or step["after"]))
        elif step.get("ranking"):
            lines.append("  list (moves against the list it started from):")
            lines.append(format_list(step["before"], step["ranking"]))
        else:
            lines.append("  list: (none usable)")
        if step["node"] != STOP:
            lines.append(f"  next: {step.get('next_node') or '-'}")
        for note in step.get("notes") or []:
            lines.append(f"  note: {note}")
        if step.get("problem"):
            lines.append(f"  problem: {step['problem']}")
        if step.get("repair"):
            r = step["repair"]
            lines.append(
                f"  repair: {r.get('permutations', 0)} of {r.get('answers', 0)} answer(s) a "
                f"permutation; appended {r.get('appended', 0)}, dropped "
                f"{r.get('duplicates', 0)} duplicate(s) and {r.get('unknown', 0)} unknown, "
                f"{r.get('ties', 0)} tie(s)"
            )
        if step.get("withdrawn"):
            lines.append(f"  shown as withdrawn: {len(step['withdrawn'])} list(s)")
        if step["node"] != STOP:
            lines.append(
                f"  calls {step.get('call_count', len(step.get('calls') or []))}, retries "
                f"{step.get('retries') or 0}, tokens {step.get('prompt_tokens') or 0}+"
                f"{step.get('completion_tokens') or 0} ({step.get('cached_tokens') or 0} "
                f"cached), latency {step.get('latency_ms') or 0:.1f} ms"
            )
        if calls:
            lines.extend(_calls_text(step.get("calls") or []))
    return "\n".join(lines)


def _calls_text(calls: Iterable[dict[str, Any]]) -> list[str]:
    out = []
    for n, call in enumerate(calls, start=1):
        out.append(f"  --- call {n} prompt ---")
        for message in call.get("messages") or []:
            out.append(f"  [{visible(str(message.get('role')))}]")
            out.extend("    " + visible(line) for line in str(message.get("content", "")).split("\n"))
        server = ", ".join(
            f"{k} {call[k]}"
            for k in ("finish_reason", "model", "cached_tokens", "window")
            if call.get(k) is not None
        )
        out.append(f"  --- call {n} answer{f' ({visible(server)})' if server else ''} ---")
        if call.get("error"):
            out.append(f"    error: {visible(str(call['error']))}")
        for i, attempt in enumerate(call.get("attempts") or [], start=1):
            out.append(
                f"    HTTP attempt {i}: status {attempt.get('status') or '-'}, "
                f"{attempt.get('latency_ms') or 0:.1f} ms"
                + (f", {visible(str(attempt['error']))}" if attempt.get("error") else "")
            )
        out.extend("    " + visible(line) for line in str(call.get("raw") or "").split("\n"))
    return out


def short_path(path: Sequence[str] | None) -> str:
    return "".join(short_label(n) for n in path or []) or "-"


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """`trace list` as an aligned table; paths abbreviated (A D F N B S) to keep rows on one line."""
    header = ("received_at", "request_id", "user", "status", "path", "calls", "tokens", "ms", "model")
    body = [
        (
            _when(r.get("received_at"))[:23],
            _clip(r["request_id"], 36),
            _clip(r["user_id"], 16),
            r["status"],
            short_path(r.get("path")),
            str(r.get("llm_calls") or 0),
            str((r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0)),
            str(r.get("latency_ms") or 0),
            _clip(r.get("model") or "-", 28),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    text = visible(text)
    return text if len(text) <= width else text[: width - 1] + "…"
