"""The replay report: how the replays compare with the originals, as a table and as JSON.

Per session: identical final ranking, Kendall tau between the two rankings, path and status
changes, token and latency differences, and the paper's metrics where the session has what they
need (a known positive for HR/NDCG, a diversity attribute for alpha-NDCG, a fairness attribute for
MAD). The aggregate is what a reviewer of an engine or model change reads first.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..audit.trace import ARROW
from ..engine.measures import alpha_ndcg, hit_rate, item_categories, item_groups, mad, ndcg
from .replayer import Comparison

K = 10


def kendall_tau(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Kendall's tau over the items both lists rank (no ties in a ranking, so tau-a = tau-b)."""
    common = [x for x in a if x in set(b)]
    n = len(common)
    if n < 2:
        return None
    pos = {x: i for i, x in enumerate(b)}
    order = [pos[x] for x in common]
    discordant = sum(1 for i in range(n) for j in range(i + 1, n) if order[i] > order[j])
    pairs = n * (n - 1) // 2
    return 1.0 - 2.0 * discordant / pairs


def session_metrics(
    request: dict[str, Any],
    ranking: Sequence[str],
    positives: Sequence[str],
    default_aspects: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """The paper's metrics this session supports, at k = 10 (MAD over the whole list, as the paper
    defines it), with the same definitions and group membership as the evaluation and the walk."""
    out: dict[str, float] = {}
    if not ranking:
        return out
    aspects = {**(default_aspects or {}), **(request.get("aspects") or {})}
    features = {str(c["item_id"]): c.get("features") or {} for c in request.get("candidates", [])}
    if positives:
        out[f"hr@{K}"] = max(hit_rate(ranking, p, K) for p in positives)
        out[f"ndcg@{K}"] = max(ndcg(ranking, p, K) for p in positives)
    diversity = aspects.get("diversity")
    if diversity and diversity.get("attribute"):
        cats = item_categories(features, diversity["attribute"])
        if any(cats.values()):
            out[f"alpha_ndcg@{K}"] = alpha_ndcg(ranking, cats, K)
    fairness = aspects.get("fairness")
    if fairness and fairness.get("attribute"):
        value = mad(ranking, _groups(features, fairness))
        if not math.isnan(value):
            out["mad"] = value
    return out


def _groups(features: Mapping[str, Mapping[str, Any]], fairness: Mapping[str, Any]) -> dict[str, str | None]:
    """Each candidate's fairness group, as `engine.measures.group_of` defines it."""
    return item_groups(features, {k: v for k, v in fairness.items() if k in ("attribute", "split_at")})


def positives_from(request: dict[str, Any], labels: Mapping[str, Sequence[str]]) -> list[str]:
    """Known positives: from a labels file (by request_id), else candidates whose features carry
    a true `label`, `positive` or `clicked` (how evaluation sets often mark the held-out item)."""
    rid = str(request.get("request_id"))
    if rid in labels:
        return list(labels[rid])
    out = []
    for c in request.get("candidates", []):
        f = c.get("features") or {}
        if any(f.get(k) in (True, 1, "1", "true") for k in ("label", "positive", "clicked")):
            out.append(str(c["item_id"]))
    return out


def load_labels(path: Path) -> dict[str, list[str]]:
    """JSONL lines {"request_id": ..., "positive": item} or {"request_id": ..., "positives": [...]}."""
    labels: dict[str, list[str]] = {}
    with path.open("rb") as handle:
        for n, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                items = row.get("positives") or [row["positive"]]
                labels[str(row["request_id"])] = [str(i) for i in items]
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise ValueError(f'{path}:{n}: expected {{"request_id": ..., "positive": ...}}') from None
    return labels


def _pair(
    c: Comparison, labels: Mapping[str, Sequence[str]], default_aspects: Mapping[str, Any] | None
) -> dict[str, Any]:
    o, r = c.original, c.replay
    entry: dict[str, Any] = {
        "request_id": o.request_id,
        "replay_id": c.replay_id,
        "error": c.error,
        "notes": c.notes,
        "status": [o.status, r.status if r else None],
        "path": [o.path, r.path if r else None],
    }
    if r is None:
        return entry
    positives = positives_from(c.request, labels)
    m_o = session_metrics(c.request, o.ranking, positives, default_aspects)
    m_r = session_metrics(c.request, r.ranking, positives, default_aspects)
    entry.update(
        {
            "identical_ranking": o.ranking == r.ranking,
            "identical_path": o.path == r.path,
            "kendall_tau": kendall_tau(o.ranking, r.ranking),
            "llm_calls": [o.llm_calls, r.llm_calls],
            "tokens": [o.tokens, r.tokens],
            "tokens_delta": r.tokens - o.tokens,
            "latency_ms": [o.latency_ms, r.latency_ms],
            "latency_delta_ms": (r.latency_ms - o.latency_ms)
            if o.latency_ms is not None and r.latency_ms is not None
            else None,
            "metrics": {k: [m_o[k], m_r[k]] for k in m_o if k in m_r},
            "ranking": [o.ranking, r.ranking] if o.ranking != r.ranking else None,
            "reproduced": c.reproduced,
            "diffs": [d.__dict__ for d in c.diffs],
        }
    )
    return entry


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def build_report(
    mode: str,
    comparisons: Sequence[Comparison],
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
    default_aspects: Mapping[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The aggregate and per-session comparison, JSON-ready."""
    per = [_pair(c, labels or {}, default_aspects) for c in comparisons]
    done = [p for p in per if p.get("identical_ranking") is not None]
    taus = [p["kendall_tau"] for p in done if p["kendall_tau"] is not None]
    status_changes = Counter(
        f"{p['status'][0]}->{p['status'][1]}" for p in done if p["status"][0] != p["status"][1]
    )
    metrics: dict[str, dict[str, Any]] = {}
    for name in sorted({k for p in done for k in p["metrics"]}):
        pairs = [p["metrics"][name] for p in done if name in p["metrics"]]
        before, after = _mean([a for a, _ in pairs]), _mean([b for _, b in pairs])
        metrics[name] = {
            "sessions": len(pairs),
            "original": before,
            "replay": after,
            "delta": (after - before) if before is not None and after is not None else None,
        }
    latency = [p for p in done if p["latency_delta_ms"] is not None]
    report: dict[str, Any] = {
        "mode": mode,
        "config": config or {},
        "sessions": len(per),
        "replayed": len(done),
        "errors": sum(1 for p in per if p["error"]),
        "reproduced": sum(1 for c in comparisons if c.reproduced) if mode == "recorded" else None,
        "identical_rankings": sum(1 for p in done if p["identical_ranking"]),
        "identical_share": (sum(1 for p in done if p["identical_ranking"]) / len(per)) if per else None,
        "path_changes": sum(1 for p in done if not p["identical_path"]),
        "status_changes": dict(status_changes),
        "kendall_tau": {
            "mean": _mean(taus),
            "median": statistics.median(taus) if taus else None,
            "min": min(taus) if taus else None,
        },
        "tokens": {
            "original_mean": _mean([p["tokens"][0] for p in done]),
            "replay_mean": _mean([p["tokens"][1] for p in done]),
            "delta_mean": _mean([p["tokens_delta"] for p in done]),
        },
        "latency_ms": {
            "original_mean": _mean([p["latency_ms"][0] for p in latency]),
            "replay_mean": _mean([p["latency_ms"][1] for p in latency]),
            "delta_mean": _mean([p["latency_delta_ms"] for p in latency]),
        },
        "metrics": metrics,
        "per_session": per,
    }
    return report


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def _num(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "-"
    if abs(value) < 0.5 * 10**-digits:
        value = 0.0  # no "-0.000"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def render_report(report: dict[str, Any], max_rows: int = 20) -> str:
    """The summary table, then the sessions that changed (at most `max_rows`)."""
    n = report["sessions"]
    same = report["identical_rankings"]
    rows = [
        ("sessions", f"{n} ({report['replayed']} replayed, {report['errors']} errors)"),
        ("identical final rankings", f"{same}/{n} ({100.0 * same / n:.1f}%)" if n else "-"),
        ("path changes", str(report["path_changes"])),
        ("status changes", ", ".join(f"{k} {v}" for k, v in report["status_changes"].items()) or "none"),
        (
            "Kendall tau mean/median/min",
            " / ".join(_num(report["kendall_tau"][k]) for k in ("mean", "median", "min")),
        ),
        (
            "tokens per session",
            f"{_num(report['tokens']['original_mean'], 1)} -> "
            f"{_num(report['tokens']['replay_mean'], 1)} "
            f"({_num(report['tokens']['delta_mean'], 1, True)})",
        ),
        (
            "latency ms per session",
            f"{_num(report['latency_ms']['original_mean'], 1)} -> "
            f"{_num(report['latency_ms']['replay_mean'], 1)} "
            f"({_num(report['latency_ms']['delta_mean'], 1, True)})",
        ),
    ]
    if report.get("reproduced") is not None:
        rows.insert(1, ("reproduced (recorded)", f"{report['reproduced']}/{n}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"replay report ({report['mode']})"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if report["metrics"]:
        lines.append("")
        lines.append(f"  {'metric'.ljust(14)} {'sessions':>8} {'original':>9} {'replay':>9} {'delta':>9}")
        for name, m in report["metrics"].items():
            lines.append(
                f"  {name.ljust(14)} {m['sessions']:>8} {_num(m['original']):>9} "
                f"{_num(m['replay']):>9} {_num(m['delta'], sign=True):>9}"
            )
    recorded = report["mode"] == "recorded"
    changed = [
        p
        for p in report["per_session"]
        if p["error"]
        or not p.get("identical_ranking")
        or not p.get("identical_path")
        or (recorded and not p.get("reproduced"))
    ]
    if changed:
        lines.append("")
        lines.append(f"  changed sessions ({len(changed)}; first {min(len(changed), max_rows)}):")
        for p in changed[:max_rows]:
            if p["error"]:
                lines.append(f"    {p['request_id']}: error: {p['error']}")
                continue
            before, after = p["path"]
            path = ARROW.join(before) + (" (same)" if before == after else "  =>  " + ARROW.join(after or []))
            old, new = p["status"]
            status = old if old == new else f"{old} -> {new}"
            name = p["request_id"]
            if p["replay_id"] != name:
                name += f" -> {p['replay_id']}"
            steps = f", {len(p['diffs'])} step difference(s)" if p.get("diffs") else ""
            lines.append(f"    {name}: tau {_num(p['kendall_tau'])}, status {status}{steps}, path {path}")
    return "\n".join(lines)


def _items(items: Sequence[str] | None) -> str:
    return " ".join(items) if items is not None else "(none)"


def _first_difference(a: Sequence[str] | None, b: Sequence[str] | None) -> str:
    if a is None or b is None:
        return ""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f" (first difference at rank {i + 1})"
    return f" (lengths {len(a)} and {len(b)})"


def render_diff(c: Comparison) -> str:
    """A recorded replay that differs, step by step: what was stored and what the code did now."""
    lines = [
        f"DIFFERS {c.original.request_id}: {len(c.diffs)} step difference(s)"
        + (f"; {c.error}" if c.error else "")
    ]
    for d in c.diffs:
        if d.field == "step":
            lines.append(
                f"  step {d.step}: stored {d.stored or '(no step)'}, replayed {d.replayed or '(no step)'}"
            )
        elif d.field in ("ranking", "removed", "offered"):
            lines.append(f"  step {d.step} {d.node}: {d.field}{_first_difference(d.stored, d.replayed)}")
            lines.append(f"    stored:   {_items(d.stored)}")
            lines.append(f"    replayed: {_items(d.replayed)}")
        else:
            label = "next node" if d.field == "next_node" else d.field
            lines.append(f"  step {d.step} {d.node}: {label} stored {d.stored}, replayed {d.replayed}")
    o, r = c.original, c.replay
    if r is not None:
        if o.path != r.path:
            lines.append(f"  path: stored {ARROW.join(o.path)}; replayed {ARROW.join(r.path)}")
        if o.status != r.status:
            lines.append(f"  status: stored {o.status}; replayed {r.status} ({r.reason})")
        if o.ranking != r.ranking:
            lines.append(f"  final ranking: stored   {_items(o.ranking)}")
            lines.append(f"                 replayed {_items(r.ranking)}")
    for note in c.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
