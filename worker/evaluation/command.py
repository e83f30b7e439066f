"""`llm4rerank eval`: the paper's offline protocol on a dataset the user brings (or generated data):
GMF candidates, walks and baselines with bounded concurrency, a resumable per-request cache, and a
report in the layout of the paper's Tables 2 and 3 with PNG plots."""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from ..extras import MissingExtra, require_extra
from .protocols import DEFAULT_PROTOCOL, GOALS, PROTOCOLS

POLICIES = ("llm", "heuristic", "upstream", "random", "popularity", "mmr", "dpp", "fair")
DATASETS = ("synthetic", "ml-1m", "kuairand", "douban", "csv")
SYNTHETIC_MIN_USERS = 200  # GMF needs some users to learn from; only --users of them are evaluated
CASES_VERSION = 2  # bump when candidate generation changes, so old outputs are not reused


def _list(value: str, allowed: tuple[str, ...] | None, option: str) -> list[str]:
    items = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not items:
        raise ValueError(f"{option} is empty; give a comma-separated list")
    if allowed is not None:
        unknown = [v for v in items if v not in allowed]
        if unknown:
            raise ValueError(f"{option}: unknown {', '.join(unknown)}; "
                             f"use a comma list of {', '.join(allowed)}")
    return items


def _ks(value: str) -> list[int]:
    try:
        ks = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--k {value!r}: give cut-offs as integers, e.g. 10,20") from None
    if not ks or ks[0] < 1:
        raise ValueError("--k needs positive cut-offs, e.g. 10,20")
    return ks


def eval_command(
    dataset: Annotated[str, typer.Option(help="synthetic, ml-1m, kuairand, douban or csv")] = "synthetic",
    data_dir: Annotated[Path | None, typer.Option(
        help="folder with the dataset's files (a CSV file for --dataset csv); never downloaded")] = None,
    users: Annotated[int, typer.Option(
        min=0, help="users to evaluate, sampled with --seed (0 = all); generated data: max(N, 200)")] = 100,
    goals: Annotated[str, typer.Option(help="Goal variants: A,D,F,ADF,D-F,F-D")] = "A,D,F,ADF,D-F,F-D",
    policy: Annotated[str, typer.Option(
        help="comma list of llm (the configured endpoint), heuristic, upstream, random, popularity, "
             "mmr, dpp, fair")]
        = "heuristic,upstream,random,popularity,mmr,dpp,fair",
    out: Annotated[Path, typer.Option(help="report folder; also holds the resumable cache")]
        = Path("artifacts/eval"),
    concurrency: Annotated[int, typer.Option(min=1, help="walks in flight")] = 8,
    seed: Annotated[int, typer.Option(help="seeds data generation, GMF and user sampling")] = 0,
    k: Annotated[str, typer.Option(help="metric cut-offs")] = "10,20",
    items: Annotated[int, typer.Option(min=30, help="items in generated data")] = 300,
    columns: Annotated[str, typer.Option(
        help="--dataset csv: role=column list, "
             "e.g. user=uid,item=iid,time=ts,category=genre,group=year")] = "",
    split_at: Annotated[float | None, typer.Option(help="--dataset csv: numeric group column split")] = None,
    candidates: Annotated[int, typer.Option(min=2, max=100, help="candidates per request")] = 20,
    max_steps: Annotated[int, typer.Option(min=1, max=50, help="step cap per walk (the paper: 5)")] = 5,
    protocol: Annotated[str, typer.Option(
        help="candidate lists: paper (the paper's: GMF top n-1 + the held-out item, in GMF order), "
             "random-position (the held-out item at a random position) or retrieved (only users whose "
             "held-out item GMF puts in its top n)")] = DEFAULT_PROTOCOL,
    fresh: Annotated[bool, typer.Option(help="discard earlier results in --out")] = False,
    progress: Annotated[bool, typer.Option(help="progress bar on stderr")] = True,
) -> None:
    """Evaluate LLM4Rerank with the paper's protocol and metrics (HR, NDCG, alpha-NDCG, MAD)."""
    from ..cli import fail, run, settings_or_exit

    try:
        require_extra("eval", "llm4rerank eval")
    except MissingExtra as exc:
        raise fail(str(exc)) from None
    try:
        goal_list = _list(goals, tuple(GOALS), "--goals")
        policies = _list(policy, POLICIES, "--policy")
        ks = _ks(k)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if protocol not in PROTOCOLS:
        raise fail(f"--protocol {protocol!r} unknown; use one of {', '.join(PROTOCOLS)}")
    if dataset not in DATASETS:
        raise fail(f"--dataset {dataset!r} unknown; use one of {', '.join(DATASETS)}")
    settings = settings_or_exit()
    if "llm" in policies and not settings.llm_base_url:
        raise fail("--policy llm needs an endpoint: set LLM4RERANK_LLM_BASE_URL (and LLM4RERANK_LLM_MODEL), "
                   "or drop llm from --policy")
    setup = {
        "version": CASES_VERSION, "dataset": dataset,
        "data_dir": str(data_dir.resolve()) if data_dir else None, "users": users, "seed": seed,
        "items": items if dataset == "synthetic" else None, "columns": columns or None, "split_at": split_at,
        "candidates": candidates, "max_steps": max_steps, "protocol": protocol,
    }
    started = time.monotonic()
    try:
        prepared = _prepare(out, setup, fresh)
    except _SetupError as exc:
        raise fail(str(exc)) from None
    cases, info = prepared

    async def main() -> tuple[list[Any], int, dict[str, Any]]:
        from ..policies.chat import OpenAIChat
        from ..service import Reranker
        from .baselines import BASELINES, popularity
        from .runner import BaselineMethod, Method, ResultCache, WalkMethod, run_all

        chat = None
        methods: list[Method] = []
        llm_info: dict[str, Any] = {}
        try:
            for name in policies:
                if name == "llm":
                    chat = OpenAIChat(settings)
                    await chat.check()
                    reranker = Reranker(settings, chat, policy="llm")
                    llm_info = {"llm_model": settings.llm_model, "llm_base_url": settings.llm_base_url,
                                "prompt_version": reranker.prompt_version}
                    methods.append(WalkMethod("llm", reranker))
                elif name == "heuristic":
                    methods.append(WalkMethod("heuristic", Reranker(settings, None, policy="heuristic")))
                elif name == "popularity":
                    methods.append(BaselineMethod(name, popularity(info.get("popularity", {}))))
                else:
                    methods.append(BaselineMethod(name, BASELINES[name]))
            cache = ResultCache(out / "cache" / "results.jsonl")
            records, ran = await run_all(methods, cases, goal_list, cache, concurrency, progress)
        finally:
            if chat is not None:
                await chat.close()
        return records, ran, llm_info

    records, ran, llm_info = run(main())
    from ..simllm import SIMULATED_MODEL
    from .report import write_report

    context = {
        **{key: value for key, value in info.items() if key != "popularity"}, **llm_info,
        "goals": goal_list, "policies": policies, "ks": ks, "max_steps": max_steps,
        "seed": seed, "ran": ran, "reused": len(records) - ran, "seconds": time.monotonic() - started,
        "simulated": llm_info.get("llm_model") == SIMULATED_MODEL,
    }
    paths = write_report(out, context, records, cases, ks)
    text = paths["markdown"].read_text(encoding="utf-8")
    table = text[text.index("## Table 2"):text.index("Best value per column")]
    if context["simulated"]:
        typer.echo(f"NOTE: the llm rows come from {SIMULATED_MODEL}, a SIMULATED LLM (heuristic answers).")
    typer.echo(table.rstrip())
    typer.echo(f"\nran {ran} requests, reused {len(records) - ran} from the cache, "
               f"{context['seconds']:.1f} s; report: {paths['markdown']}")
    for key in ("json", "metrics_png", "positions_png", "node_usage_png"):
        typer.echo(f"  {paths[key]}")
    raise typer.Exit(0)


class _SetupError(ValueError):
    pass


def _fingerprint(setup: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(setup, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _prepare(out: Path, setup: dict[str, Any], fresh: bool) -> tuple[list[Any], dict[str, Any]]:
    """The evaluation cases: reused from `out` when it holds the same setup, else built (data, GMF,
    candidates) and written there with a manifest naming the setup."""
    from .candidates import Case

    manifest_path, cases_path = out / "manifest.json", out / "cases.jsonl"
    fingerprint = _fingerprint(setup)
    if manifest_path.exists() and not fresh:
        manifest = orjson.loads(manifest_path.read_bytes())
        if manifest.get("fingerprint") != fingerprint:
            before = manifest.get("setup", {})
            differs = sorted(k for k in set(before) | set(setup) if before.get(k) != setup.get(k))
            raise _SetupError(f"--out {out} holds an evaluation with a different setup "
                              f"({', '.join(differs)}); "
                              "pass --fresh to discard it or choose another --out")
        if cases_path.exists():
            with cases_path.open("rb") as handle:
                cases = [Case.from_json(orjson.loads(line)) for line in handle if line.strip()]
            typer.echo(f"reusing {len(cases)} requests from {cases_path}", err=True)
            return cases, manifest["info"]
    if fresh:
        for stale in (manifest_path, cases_path, out / "requests.jsonl"):
            stale.unlink(missing_ok=True)
        shutil.rmtree(out / "cache", ignore_errors=True)
    cases, info = _build(setup)
    out.mkdir(parents=True, exist_ok=True)
    with cases_path.open("wb") as handle:
        for case in cases:
            handle.write(orjson.dumps(case.to_json()) + b"\n")
    with (out / "requests.jsonl").open("wb") as handle:  # contract format, one line per request
        for case in cases:
            handle.write(orjson.dumps(case.request.model_dump(mode="json", exclude_none=True)) + b"\n")
    manifest_path.write_bytes(orjson.dumps({"fingerprint": fingerprint, "setup": setup, "info": info},
                                           option=orjson.OPT_INDENT_2))
    return cases, info


def _build(setup: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    import numpy as np

    from .candidates import build_cases, leave_one_out, pick_users
    from .datasets import DataError, load
    from .gmf import GMFCollapsed, GMFConfig, hit_rate_full, popularity_counts, train_gmf

    name = setup["dataset"]
    data_dir = Path(setup["data_dir"]) if setup["data_dir"] else None
    n_users = setup["users"]
    try:
        data = load(name, data_dir, users=max(n_users, SYNTHETIC_MIN_USERS), items=setup["items"] or 300,
                    seed=setup["seed"], columns=setup["columns"] or "", split_at=setup["split_at"])
    except DataError as exc:
        raise _SetupError(str(exc)) from None
    except OSError as exc:
        raise _SetupError(f"cannot read the data: {exc}; check --data-dir") from None
    inter = data.interactions

    def echo(message: str) -> None:
        typer.echo(message, err=True)

    echo(f"{data.name}: {inter.n_users} users, {inter.n_items} items, {len(inter)} interactions")
    split = leave_one_out(data)
    chosen = pick_users(split, n_users, setup["seed"])
    if len(chosen) == 0:
        raise _SetupError(f"{data.name}: no user has 2 or more interactions; leave-one-out needs them")
    if inter.n_items < setup["candidates"] + 1:
        raise _SetupError(f"{data.name} has {inter.n_items} items; --candidates {setup['candidates']} "
                          "needs more")
    config = GMFConfig(seed=setup["seed"], batch_size=2048 if len(split.train_user) < 500_000 else 8192)
    echo(f"training GMF on {len(split.train_user)} interactions (at most {config.epochs} epochs, "
         f"dim {config.dim}, early stopping on a validation interaction)")
    t0 = time.monotonic()
    try:
        model = train_gmf(split.train_user, split.train_item, inter.n_users, inter.n_items, config)
    except GMFCollapsed as exc:
        raise _SetupError(f"{data.name}: {exc}") from None
    cases = build_cases(data, split, model, chosen, n_candidates=setup["candidates"],
                        max_steps=setup["max_steps"], protocol=setup["protocol"], seed=setup["seed"])
    if not cases:
        raise _SetupError(f"{data.name}: --protocol {setup['protocol']} leaves no user to evaluate")
    counts = popularity_counts(split.train_item, inter.n_items)
    in_lists = {c.item_id for case in cases for c in case.request.candidates}
    info = {
        "dataset": data.name, "notes": data.notes, "users": len(cases), "candidates": setup["candidates"],
        "dataset_users": inter.n_users, "dataset_items": inter.n_items, "interactions": len(inter),
        "aspects": data.aspects, "gmf": asdict(config), "gmf_seconds": round(time.monotonic() - t0, 1),
        "gmf_final_loss": model.losses[-1] if model.losses else None,
        "gmf_base_rate_loss": model.base_rate_loss, "gmf_epochs": len(model.losses),
        "gmf_best_epoch": model.best_epoch,
        "gmf_hr10": hit_rate_full(model, split.seen, split.held_out, chosen, 10),
        "popularity_hr10": hit_rate_full(model, split.seen, split.held_out, chosen, 10, popularity=counts),
        "random_hr10": hit_rate_full(model, split.seen, split.held_out, chosen, 10,
                                     rng=np.random.default_rng(setup["seed"])),
        "protocol": setup["protocol"], "protocol_text": PROTOCOLS[setup["protocol"]],
        "eligible_users": len(chosen),
        "popularity": {inter.item_ids[i]: float(counts[i]) for i in range(inter.n_items)
                       if inter.item_ids[i] in in_lists},
    }
    n = setup["candidates"]
    natural = hit_rate_full(model, split.seen, split.held_out, chosen, n)
    where = {"paper": "for the others it is added last, so a reranker that lifts low-ranked items can gain "
                      "HR@10 from that alone: compare with the Random order row and the positions table",
             "random-position": "every list has it at a random position (--protocol random-position)",
             "retrieved": f"only those {len(cases)} users are evaluated (--protocol retrieved)"}
    info["notes"] = [*data.notes,
                     f"the held-out item is among GMF's top {n} unseen items for {natural:.0%} of the users; "
                     + where[setup["protocol"]]]
    if name == "synthetic":
        info["notes"].append(f"{len(cases)} of the {inter.n_users} generated users evaluated")
    echo(f"GMF: full-catalog HR@10 {info['gmf_hr10']:.3f} (popularity {info['popularity_hr10']:.3f}, "
         f"random {info['random_hr10']:.3f}); {len(cases)} requests")
    return cases, info
