"""The evaluation report: the paper's Table 2 (accuracy, diversity and fairness metrics per method and
Goal) and Table 3 (navigation statistics), LLM usage per request, as Markdown, JSON and PNG plots."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ..engine.nodes import ALL_NODES, STOP
from ..engine.prompts import group_of
from ..schemas import AspectConfig
from ..simllm import SIMULATED_MODEL
from . import metrics
from .candidates import Case
from .runner import NO_GOAL, Record

METHOD_LABELS = {"upstream": "GMF (upstream)", "mmr": "MMR", "dpp": "DPP (fast greedy MAP)",
                 "fair": "Fair (proportional)", "heuristic": "Heuristic", "llm": "LLM4Rerank"}
METRIC_NAMES = ("HR", "NDCG", "alpha-NDCG", "MAD")
LOWER_IS_BETTER = {"MAD"}


def label(method: str, goal: str) -> str:
    base = METHOD_LABELS.get(method, method)
    return base if goal == NO_GOAL else f"{base}-{goal}"


def case_metrics(record: Record, case: Case, ks: Sequence[int]) -> dict[str, float]:
    """Every metric at every k for one reranked request."""
    request = case.request
    div = request.aspects.get("diversity")
    fair = request.aspects.get("fairness")
    feats = {c.item_id: c.features for c in request.candidates}
    cats: dict[str, list[str]] = {}
    if div is not None:
        for item, f in feats.items():
            value = f.get(div.attribute)
            cats[item] = [str(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
    groups: dict[str, str | None] = {}
    if fair is not None:
        aspect = AspectConfig.model_validate(fair) if isinstance(fair, dict) else fair
        groups = {item: group_of(f.get(aspect.attribute), aspect) for item, f in feats.items()}
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = metrics.hit_rate(record.ranking, case.positive, k)
        out[f"NDCG@{k}"] = metrics.ndcg(record.ranking, case.positive, k)
        out[f"alpha-NDCG@{k}"] = metrics.alpha_ndcg(record.ranking, cats, k) if cats else math.nan
        out[f"MAD@{k}"] = metrics.mad(record.ranking, groups, k) if groups else math.nan
    return out


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _groups(records: Sequence[Record]) -> dict[tuple[str, str], list[Record]]:
    out: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        out[(r.method, r.goal)].append(r)
    return out


def table2(records: Sequence[Record], cases: dict[str, Case], ks: Sequence[int]) -> list[dict[str, Any]]:
    """Mean of each metric per (method, Goal), in the order methods and Goals first appear."""
    rows = []
    for (method, goal), recs in _groups(records).items():
        per = [case_metrics(r, cases[r.request_id], ks) for r in recs]
        row: dict[str, Any] = {"method": method, "goal": goal, "label": label(method, goal), "n": len(recs)}
        for k in ks:
            for name in METRIC_NAMES:
                row[f"{name}@{k}"] = _mean([p[f"{name}@{k}"] for p in per])
        rows.append(row)
    return rows


def table3(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Navigation per (walk method, Goal): node visits per request, most common paths, mean node
    steps (Stop excluded) and the share of walks the step cap stopped."""
    rows = []
    for (method, goal), recs in _groups(records).items():
        if goal == NO_GOAL:
            continue
        visits: Counter[str] = Counter()
        for r in recs:
            visits.update(n for n in r.path if n != STOP)
        paths = Counter(" > ".join(r.path) for r in recs).most_common(3)
        n = len(recs)
        rows.append({
            "method": method, "goal": goal, "label": label(method, goal), "n": n,
            "node_visits": {node: visits[node] / n for node in ALL_NODES if node != STOP},
            "mean_steps": sum(len([p for p in r.path if p != STOP]) for r in recs) / n,
            "capped_share": sum(r.capped for r in recs) / n,
            "top_paths": [{"path": p, "share": c / n} for p, c in paths],
        })
    return rows


def usage(records: Sequence[Record]) -> list[dict[str, Any]]:
    """LLM calls, tokens and latency per request, and how walks ended, per (walk method, Goal)."""
    rows = []
    for (method, goal), recs in _groups(records).items():
        if goal == NO_GOAL:
            continue
        n = len(recs)
        status = Counter(r.status for r in recs)
        rows.append({
            "method": method, "goal": goal, "label": label(method, goal), "n": n,
            "llm_calls": sum(r.llm_calls for r in recs) / n,
            "prompt_tokens": sum(r.prompt_tokens for r in recs) / n,
            "completion_tokens": sum(r.completion_tokens for r in recs) / n,
            "latency_ms": sum(r.latency_ms for r in recs) / n,
            "ok": status["ok"], "degraded": status["degraded"], "failed": status["failed"],
            "fallbacks": sum("+" in r.policy for r in recs),
            "models": sorted({r.model for r in recs}),
        })
    return rows


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _best(rows: list[dict[str, Any]], column: str) -> float | None:
    values = [r[column] for r in rows if not math.isnan(r[column])]
    if len(set(values)) < 2:  # nothing to single out
        return None
    metric = column.split("@")[0]
    return min(values) if metric in LOWER_IS_BETTER else max(values)


def markdown(context: dict[str, Any], t2: list[dict[str, Any]], t3: list[dict[str, Any]],
             use: list[dict[str, Any]], ks: Sequence[int]) -> str:
    lines = [f"# LLM4Rerank evaluation: {context['dataset']}", ""]
    if context.get("simulated"):
        lines += [f"> **SIMULATED LLM.** The `llm` rows come from `{SIMULATED_MODEL}`, a heuristic stand-in "
                  "served by `llm4rerank sim-llm`, not a language model. They test the pipeline, not the "
                  "paper's claims.", ""]
    for note in context.get("notes", []):
        lines.append(f"- {note}")
    lines += [
        f"- users evaluated: {context['users']}; {context['candidates']} candidates per request "
        f"(GMF top {context['candidates'] - 1} unseen items + the held-out item, leave-one-out)",
        f"- GMF full-catalog HR@10 of the held-out item: {_fmt(context['gmf_hr10'])} "
        f"(random order: {_fmt(context['random_hr10'])})",
        f"- Goals: {', '.join(context['goals'])}; step cap {context['max_steps']} LLM calls; "
        f"seed {context['seed']}",
    ]
    if context.get("llm_model"):
        lines.append(f"- LLM: `{context['llm_model']}` at {context.get('llm_base_url')}, prompts "
                     f"`{context.get('prompt_version')}`")
    lines += [f"- requests run now: {context['ran']}, reused from the cache: {context['reused']}; "
              f"wall time {context['seconds']:.1f} s", ""]
    if context["candidates"] in ks:
        lines += [f"HR@{context['candidates']} is 1 for every method by construction: the held-out item is "
                  f"always among the {context['candidates']} candidates.", ""]
    lines += ["## Table 2: accuracy (HR, NDCG), diversity (alpha-NDCG, alpha = 0.5) and fairness (MAD, "
              "lower is fairer)", ""]
    columns = [f"{m}@{k}" for k in ks for m in METRIC_NAMES]
    lines.append("| Method | n | " + " | ".join(columns) + " |")
    lines.append("|---|---:|" + "---:|" * len(columns))
    best = {c: _best(t2, c) for c in columns}
    for row in t2:
        cells = []
        for c in columns:
            text = _fmt(row[c])
            cells.append(f"**{text}**" if best[c] is not None and row[c] == best[c] else text)
        lines.append(f"| {row['label']} | {row['n']} | " + " | ".join(cells) + " |")
    lines += ["", "Best value per column in bold.", ""]
    if t3:
        nodes = [n for n in ALL_NODES if n != STOP and any(r["node_visits"].get(n) for r in t3)]
        lines += ["## Table 3: navigation (node visits per request, by Goal)", ""]
        lines.append("| Walk | n | " + " | ".join(nodes)
                     + " | mean steps | stopped by cap | most common paths |")
        lines.append("|---|---:|" + "---:|" * (len(nodes) + 2) + "---|")
        for row in t3:
            paths = "; ".join(f"{p['path']} ({p['share']:.0%})" for p in row["top_paths"])
            lines.append(f"| {row['label']} | {row['n']} | "
                         + " | ".join(_fmt(row["node_visits"][n], 2) for n in nodes)
                         + f" | {row['mean_steps']:.2f} | {row['capped_share']:.0%} | {paths} |")
        lines.append("")
    if use:
        lines += ["## LLM calls and tokens per request (walks)", "",
                  "| Walk | n | LLM calls | prompt tokens | completion tokens | latency ms | ok | degraded | "
                  "failed | fallbacks |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in use:
            lines.append(f"| {row['label']} | {row['n']} | {row['llm_calls']:.2f} | "
                         f"{row['prompt_tokens']:.0f} | "
                         f"{row['completion_tokens']:.0f} | {row['latency_ms']:.0f} | {row['ok']} | "
                         f"{row['degraded']} | {row['failed']} | {row['fallbacks']} |")
        lines.append("")
    if context.get("simulated"):
        lines += [f"Token counts from `{SIMULATED_MODEL}` are approximate (words and punctuation).", ""]
    lines += ["Plots: `metrics.png` (each metric by method and Goal), `node_usage.png` (node visits per "
              "request by Goal).", ""]
    return "\n".join(lines)


def plot_metrics(t2: list[dict[str, Any]], ks: Sequence[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in t2]
    methods = list(dict.fromkeys(r["method"] for r in t2))
    palette = plt.get_cmap("tab10")
    colours = [palette(methods.index(r["method"]) % 10) for r in t2]
    fig, axes = plt.subplots(len(ks), len(METRIC_NAMES), squeeze=False,
                             figsize=(4.2 * len(METRIC_NAMES), 0.32 * len(labels) * len(ks) + 1.8))
    for i, k in enumerate(ks):
        for j, name in enumerate(METRIC_NAMES):
            ax = axes[i][j]
            values = [0.0 if math.isnan(r[f"{name}@{k}"]) else r[f"{name}@{k}"] for r in t2]
            ax.barh(range(len(labels)), values, color=colours)
            ax.set_yticks(range(len(labels)))
            ax.set_yticklabels(labels if j == 0 else [""] * len(labels), fontsize=8)
            ax.invert_yaxis()
            note = " (lower is fairer)" if name in LOWER_IS_BETTER else ""
            ax.set_title(f"{name}@{k}{note}", fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_node_usage(t3: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in t3))
    nodes = [n for n in ALL_NODES if n != STOP and any(r["node_visits"].get(n) for r in t3)]
    if not methods:
        fig = plt.figure(figsize=(6, 1.5))
        fig.text(0.5, 0.5, "no walks evaluated (baselines only)", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    fig, axes = plt.subplots(1, len(methods), squeeze=False, figsize=(6 * len(methods), 3.8))
    for ax, method in zip(axes[0], methods, strict=True):
        rows = [r for r in t3 if r["method"] == method]
        width = 0.8 / len(nodes)
        for j, node in enumerate(nodes):
            ax.bar([i + j * width for i in range(len(rows))], [r["node_visits"][node] for r in rows],
                   width=width, label=node)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
        ax.set_xticklabels([r["goal"] for r in rows], fontsize=9)
        ax.set_ylabel("visits per request")
        ax.set_title(METHOD_LABELS.get(method, method), fontsize=10)
        top = max([r["node_visits"][n] for r in rows for n in nodes] + [1.0])
        ax.set_ylim(0, top * 1.3)
        ax.legend(fontsize=8, ncol=len(nodes), loc="upper center")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, context: dict[str, Any], records: Sequence[Record], cases: list[Case],
                 ks: Sequence[int]) -> dict[str, Path]:
    """report.md, report.json, metrics.png and node_usage.png in `out`."""
    by_id = {c.request.request_id: c for c in cases}
    t2, t3, use = table2(records, by_id, ks), table3(records), usage(records)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json",
             "metrics_png": out / "metrics.png", "node_usage_png": out / "node_usage.png"}
    paths["markdown"].write_text(markdown(context, t2, t3, use, ks), encoding="utf-8")
    payload = {"context": context, "table2": t2, "table3": t3, "usage": use, "ks": list(ks)}
    paths["json"].write_bytes(orjson.dumps(_no_nan(payload), option=orjson.OPT_INDENT_2))
    suffix = " (SIMULATED LLM)" if context.get("simulated") else ""
    plot_metrics(t2, ks, paths["metrics_png"], f"{context['dataset']}: metrics by method and Goal{suffix}")
    plot_node_usage(t3, paths["node_usage_png"], f"{context['dataset']}: node usage by Goal{suffix}")
    return paths


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value
