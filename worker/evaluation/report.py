"""The evaluation report: the paper's Table 2 (accuracy, diversity and fairness metrics per method and
Goal) and Table 3 (navigation statistics), LLM usage per request, as Markdown, JSON and PNG plots."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ..engine.nodes import STOP, node_names
from ..simllm import SIMULATED_MODEL
from . import metrics
from .candidates import Case
from .runner import NO_GOAL, Record

METHOD_LABELS = {
    "upstream": "GMF (upstream)",
    "random": "Random order",
    "popularity": "Popularity",
    "mmr": "MMR",
    "dpp": "DPP (fast greedy MAP)",
    "fair": "Fair (proportional)",
    "heuristic": "Heuristic",
    "llm": "LLM4Rerank",
}
METRIC_NAMES = ("HR", "NDCG", "alpha-NDCG", "MAD")
LOWER_IS_BETTER = {"MAD"}
REFERENCES = ("upstream", "random")  # drawn as reference lines in the plots


def columns(ks: Sequence[int], n_candidates: int | None = None) -> list[str]:
    """Table 2's metric columns: HR, NDCG and alpha-NDCG at each k, then MAD over the whole list (the
    paper's). HR@k is left out for k >= the list length: it is 1 for every method by construction."""
    out = []
    for k in ks:
        for name in ("HR", "NDCG", "alpha-NDCG"):
            if name == "HR" and n_candidates is not None and k >= n_candidates:
                continue
            out.append(f"{name}@{k}")
    return [*out, "MAD"]


def label(method: str, goal: str) -> str:
    base = METHOD_LABELS.get(method, method)
    return base if goal == NO_GOAL else f"{base}-{goal}"


def case_metrics(record: Record, case: Case, ks: Sequence[int]) -> dict[str, float]:
    """Every metric at every k for one reranked request."""
    request = case.request
    div = request.aspects.get("diversity")
    fair = request.aspects.get("fairness")
    feats = {c.item_id: c.features for c in request.candidates}
    cats = metrics.item_categories(feats, div.attribute) if div is not None else {}
    groups = metrics.item_groups(feats, fair) if fair is not None else {}
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = metrics.hit_rate(record.ranking, case.positive, k)
        out[f"NDCG@{k}"] = metrics.ndcg(record.ranking, case.positive, k)
        out[f"alpha-NDCG@{k}"] = metrics.alpha_ndcg(record.ranking, cats, k) if cats else math.nan
    out["MAD"] = metrics.mad(record.ranking, groups) if groups else math.nan
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
        for column in per[0] if per else []:
            row[column] = _mean([p[column] for p in per])
        rows.append(row)
    return rows


def positive_positions(cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Where the held-out item sits in the candidate lists as the upstream ranker hands them over:
    requests and share per 1-based position. A protocol that puts it in one place lets a reranker
    gain by moving that place, whatever it knows about the user."""
    n = max((len(c.request.candidates) for c in cases), default=0)
    counts = Counter(1 + [x.item_id for x in c.request.candidates].index(c.positive) for c in cases)
    total = max(len(cases), 1)
    return [{"position": p, "count": counts[p], "share": counts[p] / total} for p in range(1, n + 1)]


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
        rows.append(
            {
                "method": method,
                "goal": goal,
                "label": label(method, goal),
                "n": n,
                "node_visits": {node: visits[node] / n for node in node_names() if node != STOP},
                "mean_steps": sum(len([p for p in r.path if p != STOP]) for r in recs) / n,
                "capped_share": sum(r.capped for r in recs) / n,
                "top_paths": [{"path": p, "share": c / n} for p, c in paths],
            }
        )
    return rows


def usage(records: Sequence[Record]) -> list[dict[str, Any]]:
    """LLM calls, tokens and latency per request, and how walks ended, per (walk method, Goal)."""
    rows = []
    for (method, goal), recs in _groups(records).items():
        if goal == NO_GOAL:
            continue
        n = len(recs)
        status = Counter(r.status for r in recs)
        rows.append(
            {
                "method": method,
                "goal": goal,
                "label": label(method, goal),
                "n": n,
                "llm_calls": sum(r.llm_calls for r in recs) / n,
                "prompt_tokens": sum(r.prompt_tokens for r in recs) / n,
                "completion_tokens": sum(r.completion_tokens for r in recs) / n,
                "latency_ms": sum(r.latency_ms for r in recs) / n,
                "ok": status["ok"],
                "degraded": status["degraded"],
                "failed": status["failed"],
                "fallbacks": sum("+" in r.policy for r in recs),
                "models": sorted({r.model for r in recs}),
            }
        )
    return rows


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _best(rows: list[dict[str, Any]], column: str) -> float | None:
    values: list[float] = [r[column] for r in rows if not math.isnan(r[column])]
    if len(set(values)) < 2:  # nothing to single out
        return None
    metric = column.split("@")[0]
    return min(values) if metric in LOWER_IS_BETTER else max(values)


def markdown(
    context: dict[str, Any],
    t2: list[dict[str, Any]],
    t3: list[dict[str, Any]],
    use: list[dict[str, Any]],
    ks: Sequence[int],
    positions: list[dict[str, Any]] | None = None,
) -> str:
    lines = [f"# LLM4Rerank evaluation: {context['dataset']}", ""]
    if context.get("simulated"):
        lines += [
            f"> **SIMULATED LLM.** The `llm` rows come from `{SIMULATED_MODEL}`, a heuristic stand-in "
            "served by `llm4rerank sim-llm`, not a language model. They test the pipeline, not the "
            "paper's claims.",
            "",
        ]
    for note in context.get("notes", []):
        lines.append(f"- {note}")
    protocol = context.get("protocol", "paper")
    lines += [
        f"- candidate protocol: **{protocol}**"
        + (" (the paper's, the default)" if protocol == "paper" else " (not the paper's)")
        + f": {context.get('protocol_text', '')}",
        f"- users evaluated: {context['users']}; {context['candidates']} candidates per request "
        "(leave-one-out: each user's latest interaction is the held-out item)",
        f"- full-catalog HR@10 of the held-out item (ties count against it): GMF "
        f"{_fmt(context['gmf_hr10'])}, popularity {_fmt(context.get('popularity_hr10'))}, "
        f"random order {_fmt(context['random_hr10'])}",
    ]
    if context.get("gmf_final_loss") is not None:
        lines.append(
            f"- GMF: {context.get('gmf_epochs')} epochs (best validation epoch "
            f"{context.get('gmf_best_epoch')}), final training loss "
            f"{_fmt(context['gmf_final_loss'])} against the base-rate loss "
            f"{_fmt(context.get('gmf_base_rate_loss'))}, {context.get('gmf_seconds')} s"
        )
    lines += [
        f"- Goals: {', '.join(context['goals'])}; step cap {context['max_steps']} LLM calls; "
        f"seed {context['seed']}",
    ]
    if context.get("llm_model"):
        lines.append(
            f"- LLM: `{context['llm_model']}` at {context.get('llm_base_url')}, prompts "
            f"`{context.get('prompt_version')}`"
        )
    lines += [
        f"- requests run now: {context['ran']}, reused from the cache: {context['reused']}; "
        f"wall time {context['seconds']:.1f} s",
        "",
    ]
    shown = columns(ks, context["candidates"])
    lines += [
        "## Table 2: accuracy (HR, NDCG), diversity (alpha-NDCG, alpha = 0.5) and fairness (MAD, "
        "lower is fairer)",
        "",
    ]
    lines += [
        "MAD is the paper's: positions map linearly from 1 (top) to 0 (bottom) over the whole list, "
        "and it is the gap between the two groups' mean scores (0 for a list with one group). "
        "`Random order` is a random permutation of the same candidates: the chance level on these "
        "lists. A method's gain over it, not over GMF alone, is what it knows.",
        "",
    ]
    dropped = [k for k in ks if k >= context["candidates"]]
    if dropped:
        lines += [
            f"HR@{', HR@'.join(map(str, dropped))} left out: the held-out item is always among the "
            f"{context['candidates']} candidates, so it is 1 for every method by construction.",
            "",
        ]
    lines.append("| Method | n | " + " | ".join(shown) + " |")
    lines.append("|---|---:|" + "---:|" * len(shown))
    best = {c: _best(t2, c) for c in shown}
    for row in t2:
        cells = []
        for c in shown:
            text = _fmt(row[c])
            cells.append(f"**{text}**" if best[c] is not None and row[c] == best[c] else text)
        lines.append(f"| {row['label']} | {row['n']} | " + " | ".join(cells) + " |")
    lines += ["", "Best value per column in bold.", ""]
    if positions:
        lines += [
            "## Where the held-out item sits in the candidate lists",
            "",
            "Position of the held-out item in the list the upstream ranker hands over (1 = top).",
            "",
            "| position | " + " | ".join(str(p["position"]) for p in positions) + " |",
            "|---|" + "---:|" * len(positions),
            "| requests | " + " | ".join(str(p["count"]) for p in positions) + " |",
            "| share | " + " | ".join(f"{p['share']:.0%}" for p in positions) + " |",
            "",
        ]
    if t3:
        nodes = [n for n in node_names() if n != STOP and any(r["node_visits"].get(n) for r in t3)]
        lines += ["## Table 3: navigation (node visits per request, by Goal)", ""]
        lines.append(
            "| Walk | n | " + " | ".join(nodes) + " | mean steps | stopped by cap | most common paths |"
        )
        lines.append("|---|---:|" + "---:|" * (len(nodes) + 2) + "---|")
        for row in t3:
            paths = "; ".join(f"{p['path']} ({p['share']:.0%})" for p in row["top_paths"])
            lines.append(
                f"| {row['label']} | {row['n']} | "
                + " | ".join(_fmt(row["node_visits"][n], 2) for n in nodes)
                + f" | {row['mean_steps']:.2f} | {row['capped_share']:.0%} | {paths} |"
            )
        lines.append("")
    if use:
        lines += [
            "## LLM calls and tokens per request (walks)",
            "",
            "| Walk | n | LLM calls | prompt tokens | completion tokens | latency ms | ok | degraded | "
            "failed | fallbacks |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in use:
            lines.append(
                f"| {row['label']} | {row['n']} | {row['llm_calls']:.2f} | "
                f"{row['prompt_tokens']:.0f} | "
                f"{row['completion_tokens']:.0f} | {row['latency_ms']:.0f} | {row['ok']} | "
                f"{row['degraded']} | {row['failed']} | {row['fallbacks']} |"
            )
        lines.append("")
    if context.get("simulated"):
        lines += [f"Token counts from `{SIMULATED_MODEL}` are approximate (words and punctuation).", ""]
    lines += [
        "Plots: `metrics.png` (each metric by method and Goal, with GMF and random order as reference "
        "lines), `positions.png` (where the held-out item sits), `node_usage.png` (node visits per "
        "request by Goal).",
        "",
    ]
    return "\n".join(lines)


def _zoom(values: list[float]) -> tuple[float, float]:
    """Axis limits that show the differences between bars: the data range plus a margin, starting at 0
    only when the values come close to it."""
    lo, hi = min(values), max(values)
    pad = max(0.15 * (hi - lo), 0.02)
    left = 0.0 if lo - 3 * pad <= 0 else lo - 3 * pad
    return left, hi + 2.5 * pad


def plot_metrics(
    t2: list[dict[str, Any]], ks: Sequence[int], path: Path, title: str, n_candidates: int | None = None
) -> None:
    """One panel per Table 2 column (none constant by construction), bars labelled with their values,
    the axis zoomed to the values, and GMF and random order drawn as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in columns(ks, n_candidates) if any(not math.isnan(r.get(c, math.nan)) for r in t2)]
    labels = [r["label"] for r in t2]
    methods = list(dict.fromkeys(r["method"] for r in t2))
    palette = plt.get_cmap("tab10")
    colours = [palette(methods.index(r["method"]) % 10) for r in t2]
    per_row = min(3, max(len(shown), 1))
    n_rows = max(1, math.ceil(len(shown) / per_row))
    fig, axes = plt.subplots(
        n_rows, per_row, squeeze=False, figsize=(5.0 * per_row, 0.3 * len(labels) * n_rows + 1.6 * n_rows)
    )
    refs = {m: next((r for r in t2 if r["method"] == m), None) for m in REFERENCES}
    styles = {"upstream": ("--", "black"), "random": (":", "dimgray")}
    for idx, column in enumerate(shown):
        ax = axes[idx // per_row][idx % per_row]
        values = [r.get(column, math.nan) for r in t2]
        finite = [v for v in values if not math.isnan(v)]
        ax.barh(range(len(labels)), [0.0 if math.isnan(v) else v for v in values], color=colours)
        left, right = _zoom(finite)
        ax.set_xlim(left, right)
        for y, v in enumerate(values):
            text = "n/a" if math.isnan(v) else f"{v:.3f}"
            ax.text(
                (left if math.isnan(v) else max(v, left)) + 0.01 * (right - left),
                y,
                text,
                va="center",
                fontsize=7,
                zorder=3,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8},
            )
        for method, ref in refs.items():
            if ref is not None and not math.isnan(ref.get(column, math.nan)):
                style, colour = styles[method]
                ax.axvline(
                    ref[column],
                    linestyle=style,
                    color=colour,
                    linewidth=1,
                    label=f"{METHOD_LABELS[method]} {ref[column]:.3f}",
                )
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if idx % per_row == 0 else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        note = " (lower is fairer)" if column.split("@")[0] in LOWER_IS_BETTER else ""
        ax.set_title(f"{column}{note}", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    for idx in range(len(shown), n_rows * per_row):
        axes[idx // per_row][idx % per_row].set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_positions(positions: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of the held-out item's position in the candidate lists, with the uniform share for
    reference (what a protocol that hides the positive would give)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = [p["position"] for p in positions]
    shares = [p["share"] for p in positions]
    ax.bar(xs, shares, color="tab:blue")
    for x, p in zip(xs, positions, strict=True):
        if p["count"]:
            ax.text(x, p["share"], f"{p['share']:.0%}", ha="center", va="bottom", fontsize=7)
    if xs:
        ax.axhline(
            1 / len(xs),
            linestyle=":",
            color="dimgray",
            linewidth=1,
            label=f"uniform 1/{len(xs)} = {1 / len(xs):.0%}",
        )
        ax.legend(fontsize=8)
    ax.set_xticks(xs)
    ax.set_xlabel("position of the held-out item in the upstream list (1 = top)")
    ax.set_ylabel("share of requests")
    ax.set_ylim(0, max([*shares, 1 / max(len(xs), 1)]) * 1.2)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_node_usage(t3: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in t3))
    nodes = [n for n in node_names() if n != STOP and any(r["node_visits"].get(n) for r in t3)]
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
            ax.bar(
                [i + j * width for i in range(len(rows))],
                [r["node_visits"][node] for r in rows],
                width=width,
                label=node,
            )
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


def write_report(
    out: Path, context: dict[str, Any], records: Sequence[Record], cases: list[Case], ks: Sequence[int]
) -> dict[str, Path]:
    """report.md, report.json, metrics.png and node_usage.png in `out`."""
    by_id = {c.request.request_id: c for c in cases}
    t2, t3, use = table2(records, by_id, ks), table3(records), usage(records)
    positions = positive_positions(cases)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "report.md",
        "json": out / "report.json",
        "metrics_png": out / "metrics.png",
        "positions_png": out / "positions.png",
        "node_usage_png": out / "node_usage.png",
    }
    paths["markdown"].write_text(markdown(context, t2, t3, use, ks, positions), encoding="utf-8")
    payload = {
        "context": context,
        "table2": t2,
        "table3": t3,
        "usage": use,
        "ks": list(ks),
        "columns": columns(ks, context["candidates"]),
        "positive_positions": positions,
    }
    paths["json"].write_bytes(orjson.dumps(_no_nan(payload), option=orjson.OPT_INDENT_2))
    suffix = " (SIMULATED LLM)" if context.get("simulated") else ""
    plot_metrics(
        t2,
        ks,
        paths["metrics_png"],
        f"{context['dataset']}: metrics by method and Goal{suffix}",
        context["candidates"],
    )
    protocol = context.get("protocol", "paper")
    plot_positions(
        positions,
        paths["positions_png"],
        f"{context['dataset']}: held-out item position ({protocol} protocol)",
    )
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
