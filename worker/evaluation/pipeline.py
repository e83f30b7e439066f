"""The paper's offline protocol on a dataset the user brings (or generated data): GMF candidates,
walks and baselines with bounded concurrency, a resumable per-request cache, and a report in the
layout of the paper's Tables 2 and 3 with PNG plots. `llm4rerank eval` (worker/cli/evaluation.py)
parses options and prints; this module does the work."""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import typer

from ..config import Settings
from .protocols import PROTOCOLS

POLICIES = ("llm", "heuristic", "upstream", "random", "popularity", "mmr", "dpp", "fair")
DATASETS = ("synthetic", "ml-1m", "kuairand", "douban", "csv")
SYNTHETIC_MIN_USERS = 200  # GMF needs some users to learn from; only --users of them are evaluated
CASES_VERSION = 2  # bump when candidate generation changes, so old outputs are not reused


def parse_list(value: str, allowed: tuple[str, ...] | None, option: str) -> list[str]:
    items = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not items:
        raise ValueError(f"{option} is empty; give a comma-separated list")
    if allowed is not None:
        unknown = [v for v in items if v not in allowed]
        if unknown:
            raise ValueError(
                f"{option}: unknown {', '.join(unknown)}; use a comma list of {', '.join(allowed)}"
            )
    return items


def parse_ks(value: str) -> list[int]:
    try:
        ks = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--k {value!r}: give cut-offs as integers, e.g. 10,20") from None
    if not ks or ks[0] < 1:
        raise ValueError("--k needs positive cut-offs, e.g. 10,20")
    return ks


class Evaluation:
    """One `llm4rerank eval` run: the cases (reused or built), the methods, the walks and the report."""

    def __init__(
        self,
        settings: Settings,
        out: Path,
        setup: dict[str, Any],
        *,
        policies: list[str],
        goals: list[str],
        ks: list[int],
        concurrency: int,
        progress: bool,
    ) -> None:
        self.settings, self.out, self.setup = settings, out, setup
        self.policies, self.goals, self.ks = policies, goals, ks
        self.concurrency, self.progress = concurrency, progress
        self.started = time.monotonic()

    def prepare(self, fresh: bool) -> tuple[list[Any], dict[str, Any]]:
        """The cases and the dataset's facts; SetupError names what to fix."""
        return _prepare(self.out, self.setup, fresh)

    async def run(self, cases: list[Any], info: dict[str, Any]) -> tuple[list[Any], int, dict[str, Any]]:
        """Every method on every case and Goal, resumable from the cache in `out`."""
        from ..policies.chat import OpenAIChat
        from ..service import Reranker
        from .baselines import BASELINES, popularity
        from .runner import BaselineMethod, Method, ResultCache, WalkMethod, run_all

        settings = self.settings
        chat = None
        methods: list[Method] = []
        llm_info: dict[str, Any] = {}
        try:
            for name in self.policies:
                if name == "llm":
                    chat = OpenAIChat(settings)
                    await chat.check()
                    reranker = Reranker(settings, chat, policy="llm")
                    llm_info = {
                        "llm_model": settings.llm_model,
                        "llm_base_url": settings.llm_base_url,
                        "prompt_version": reranker.prompt_version,
                    }
                    methods.append(WalkMethod("llm", reranker))
                elif name == "heuristic":
                    methods.append(WalkMethod("heuristic", Reranker(settings, None, policy="heuristic")))
                elif name == "popularity":
                    methods.append(BaselineMethod(name, popularity(info.get("popularity", {}))))
                else:
                    methods.append(BaselineMethod(name, BASELINES[name]))
            cache = ResultCache(self.out / "cache" / "results.jsonl")
            records, ran = await run_all(methods, cases, self.goals, cache, self.concurrency, self.progress)
        finally:
            if chat is not None:
                await chat.close()
        return records, ran, llm_info

    def report(
        self, records: list[Any], ran: int, llm_info: dict[str, Any], cases: list[Any], info: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Path]]:
        """Write the report (Markdown, JSON, plots); returns its context and the files' paths."""
        from ..simllm import SIMULATED_MODEL
        from .report import write_report

        context = {
            **{key: value for key, value in info.items() if key != "popularity"},
            **llm_info,
            "goals": self.goals,
            "policies": self.policies,
            "ks": self.ks,
            "max_steps": self.setup["max_steps"],
            "seed": self.setup["seed"],
            "ran": ran,
            "reused": len(records) - ran,
            "seconds": time.monotonic() - self.started,
            "simulated": llm_info.get("llm_model") == SIMULATED_MODEL,
        }
        return context, write_report(self.out, context, records, cases, self.ks)


class SetupError(ValueError):
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
            raise SetupError(
                f"--out {out} holds an evaluation with a different setup "
                f"({', '.join(differs)}); "
                "pass --fresh to discard it or choose another --out"
            )
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
    manifest_path.write_bytes(
        orjson.dumps({"fingerprint": fingerprint, "setup": setup, "info": info}, option=orjson.OPT_INDENT_2)
    )
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
        data = load(
            name,
            data_dir,
            users=max(n_users, SYNTHETIC_MIN_USERS),
            items=setup["items"] or 300,
            seed=setup["seed"],
            columns=setup["columns"] or "",
            split_at=setup["split_at"],
        )
    except DataError as exc:
        raise SetupError(str(exc)) from None
    except OSError as exc:
        raise SetupError(f"cannot read the data: {exc}; check --data-dir") from None
    inter = data.interactions

    def echo(message: str) -> None:
        typer.echo(message, err=True)

    echo(f"{data.name}: {inter.n_users} users, {inter.n_items} items, {len(inter)} interactions")
    split = leave_one_out(data)
    chosen = pick_users(split, n_users, setup["seed"])
    if len(chosen) == 0:
        raise SetupError(f"{data.name}: no user has 2 or more interactions; leave-one-out needs them")
    if inter.n_items < setup["candidates"] + 1:
        raise SetupError(
            f"{data.name} has {inter.n_items} items; --candidates {setup['candidates']} needs more"
        )
    config = GMFConfig(seed=setup["seed"], batch_size=2048 if len(split.train_user) < 500_000 else 8192)
    echo(
        f"training GMF on {len(split.train_user)} interactions (at most {config.epochs} epochs, "
        f"dim {config.dim}, early stopping on a validation interaction)"
    )
    t0 = time.monotonic()
    try:
        model = train_gmf(split.train_user, split.train_item, inter.n_users, inter.n_items, config)
    except GMFCollapsed as exc:
        raise SetupError(f"{data.name}: {exc}") from None
    cases = build_cases(
        data,
        split,
        model,
        chosen,
        n_candidates=setup["candidates"],
        max_steps=setup["max_steps"],
        protocol=setup["protocol"],
        seed=setup["seed"],
    )
    if not cases:
        raise SetupError(f"{data.name}: --protocol {setup['protocol']} leaves no user to evaluate")
    counts = popularity_counts(split.train_item, inter.n_items)
    in_lists = {c.item_id for case in cases for c in case.request.candidates}
    info = {
        "dataset": data.name,
        "notes": data.notes,
        "users": len(cases),
        "candidates": setup["candidates"],
        "dataset_users": inter.n_users,
        "dataset_items": inter.n_items,
        "interactions": len(inter),
        "aspects": data.aspects,
        "gmf": asdict(config),
        "gmf_seconds": round(time.monotonic() - t0, 1),
        "gmf_final_loss": model.losses[-1] if model.losses else None,
        "gmf_base_rate_loss": model.base_rate_loss,
        "gmf_epochs": len(model.losses),
        "gmf_best_epoch": model.best_epoch,
        "gmf_hr10": hit_rate_full(model, split.seen, split.held_out, chosen, 10),
        "popularity_hr10": hit_rate_full(model, split.seen, split.held_out, chosen, 10, popularity=counts),
        "random_hr10": hit_rate_full(
            model, split.seen, split.held_out, chosen, 10, rng=np.random.default_rng(setup["seed"])
        ),
        "protocol": setup["protocol"],
        "protocol_text": PROTOCOLS[setup["protocol"]],
        "eligible_users": len(chosen),
        "popularity": {
            inter.item_ids[i]: float(counts[i]) for i in range(inter.n_items) if inter.item_ids[i] in in_lists
        },
    }
    n = setup["candidates"]
    natural = hit_rate_full(model, split.seen, split.held_out, chosen, n)
    where = {
        "paper": "for the others it is added last, so a reranker that lifts low-ranked items can gain "
        "HR@10 from that alone: compare with the Random order row and the positions table",
        "random-position": "every list has it at a random position (--protocol random-position)",
        "retrieved": f"only those {len(cases)} users are evaluated (--protocol retrieved)",
    }
    info["notes"] = [
        *data.notes,
        f"the held-out item is among GMF's top {n} unseen items for {natural:.0%} of the users; "
        + where[setup["protocol"]],
    ]
    if name == "synthetic":
        info["notes"].append(f"{len(cases)} of the {inter.n_users} generated users evaluated")
    echo(
        f"GMF: full-catalog HR@10 {info['gmf_hr10']:.3f} (popularity {info['popularity_hr10']:.3f}, "
        f"random {info['random_hr10']:.3f}); {len(cases)} requests"
    )
    return cases, info
