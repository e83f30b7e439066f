"""`llm4rerank eval`: options and printing; the protocol itself is worker/evaluation/pipeline.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..evaluation.protocols import DEFAULT_PROTOCOL, GOALS, PROTOCOLS
from .common import fail, run, settings_or_exit


def eval_command(
    dataset: Annotated[str, typer.Option(help="synthetic, ml-1m, kuairand, douban or csv")] = "synthetic",
    data_dir: Annotated[
        Path | None,
        typer.Option(help="folder with the dataset's files (a CSV file for --dataset csv); never downloaded"),
    ] = None,
    users: Annotated[
        int,
        typer.Option(
            min=0, help="users to evaluate, sampled with --seed (0 = all); generated data: max(N, 200)"
        ),
    ] = 100,
    goals: Annotated[str, typer.Option(help="Goal variants: A,D,F,ADF,D-F,F-D")] = "A,D,F,ADF,D-F,F-D",
    policy: Annotated[
        str,
        typer.Option(
            help="comma list of llm (the configured endpoint), heuristic, upstream, random, popularity, "
            "mmr, dpp, fair"
        ),
    ] = "heuristic,upstream,random,popularity,mmr,dpp,fair",
    out: Annotated[Path, typer.Option(help="report folder; also holds the resumable cache")] = Path(
        "artifacts/eval"
    ),
    concurrency: Annotated[int, typer.Option(min=1, help="walks in flight")] = 8,
    seed: Annotated[int, typer.Option(help="seeds data generation, GMF and user sampling")] = 0,
    k: Annotated[str, typer.Option(help="metric cut-offs")] = "10,20",
    items: Annotated[int, typer.Option(min=30, help="items in generated data")] = 300,
    columns: Annotated[
        str,
        typer.Option(
            help="--dataset csv: role=column list, e.g. user=uid,item=iid,time=ts,category=genre,group=year"
        ),
    ] = "",
    split_at: Annotated[float | None, typer.Option(help="--dataset csv: numeric group column split")] = None,
    candidates: Annotated[int, typer.Option(min=2, max=100, help="candidates per request")] = 20,
    max_steps: Annotated[int, typer.Option(min=1, max=50, help="step cap per walk (the paper: 5)")] = 5,
    protocol: Annotated[
        str,
        typer.Option(
            help="candidate lists: paper (the paper's: GMF top n-1 + the held-out item, in GMF order), "
            "random-position (the held-out item at a random position) or retrieved (only users whose "
            "held-out item GMF puts in its top n)"
        ),
    ] = DEFAULT_PROTOCOL,
    fresh: Annotated[bool, typer.Option(help="discard earlier results in --out")] = False,
    progress: Annotated[bool, typer.Option(help="progress bar on stderr")] = True,
) -> None:
    """Evaluate LLM4Rerank with the paper's protocol and metrics (HR, NDCG, alpha-NDCG, MAD)."""
    from ..evaluation.pipeline import (
        CASES_VERSION,
        DATASETS,
        POLICIES,
        Evaluation,
        SetupError,
        parse_ks,
        parse_list,
    )
    from ..extras import MissingExtra, require_extra
    from ..simllm import SIMULATED_MODEL

    try:
        require_extra("eval", "llm4rerank eval")
    except MissingExtra as exc:
        raise fail(str(exc)) from None
    try:
        goal_list = parse_list(goals, tuple(GOALS), "--goals")
        policies = parse_list(policy, POLICIES, "--policy")
        ks = parse_ks(k)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if protocol not in PROTOCOLS:
        raise fail(f"--protocol {protocol!r} unknown; use one of {', '.join(PROTOCOLS)}")
    if dataset not in DATASETS:
        raise fail(f"--dataset {dataset!r} unknown; use one of {', '.join(DATASETS)}")
    settings = settings_or_exit()
    if "llm" in policies and not settings.llm_base_url:
        raise fail(
            "--policy llm needs an endpoint: set LLM4RERANK_LLM_BASE_URL (and LLM4RERANK_LLM_MODEL), "
            "or drop llm from --policy"
        )
    setup = {
        "version": CASES_VERSION,
        "dataset": dataset,
        "data_dir": str(data_dir.resolve()) if data_dir else None,
        "users": users,
        "seed": seed,
        "items": items if dataset == "synthetic" else None,
        "columns": columns or None,
        "split_at": split_at,
        "candidates": candidates,
        "max_steps": max_steps,
        "protocol": protocol,
    }
    evaluation = Evaluation(
        settings,
        out,
        setup,
        policies=policies,
        goals=goal_list,
        ks=ks,
        concurrency=concurrency,
        progress=progress,
    )
    try:
        cases, info = evaluation.prepare(fresh)
    except SetupError as exc:
        raise fail(str(exc)) from None
    records, ran, llm_info = run(evaluation.run(cases, info))
    context, paths = evaluation.report(records, ran, llm_info, cases, info)
    text = paths["markdown"].read_text(encoding="utf-8")
    table = text[text.index("## Table 2") : text.index("Best value per column")]
    if context["simulated"]:
        typer.echo(f"NOTE: the llm rows come from {SIMULATED_MODEL}, a SIMULATED LLM (heuristic answers).")
    typer.echo(table.rstrip())
    typer.echo(
        f"\nran {ran} requests, reused {len(records) - ran} from the cache, "
        f"{context['seconds']:.1f} s; report: {paths['markdown']}"
    )
    for key in ("json", "metrics_png", "positions_png", "node_usage_png"):
        typer.echo(f"  {paths[key]}")
    raise typer.Exit(0)
