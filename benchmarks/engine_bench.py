"""Navigation engine benchmark: CPU per step, prompt tokens per step, prefix-cache share.

On 100 seeded requests of 20 candidates against `llm4rerank sim-llm` (SIMULATED, zero latency):

1. Engine CPU time per node step, without the wait for the LLM: a first pass records every
   answer sim-llm gives over HTTP; the walks are then replayed from those recordings
   (`RecordedChat`, no HTTP) and process time is divided by the node steps taken.
   Target: under 1 ms.
2. Prompt tokens per LLM call for our `default` templates and for the `paper` templates, counted
   with a real SentencePiece tokenizer whose vocabulary ships inside a PyPI wheel (see
   `find_tokenizer`). Target: ours at most half of the paper's.
3. The share of each later prompt of a session (message contents concatenated in order) that is
   a byte-identical prefix of the session's first prompt (vLLM's automatic prefix caching reuses
   it). Target: at least 80%.

Usage: .venv/bin/python benchmarks/engine_bench.py [--requests 100] [--candidates 20]
                                                   [--tokenizer PATH/TO/tokenizer.model]
Needs `sentencepiece` and `mistral-common` (for its bundled tokenizer file) unless --tokenizer.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.metadata
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from worker.samples import sample_requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from service_kit import free_port, wait_http

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "llm4rerank")
SIM_MODEL = "sim-llm-simulated"


def make_requests(count: int, candidates: int, seed: int = 2406) -> list[bytes]:
    """Requests shaped like examples/requests.jsonl, from the package's seeded sample generator."""
    return [
        json.dumps(r).encode()
        for r in sample_requests(count, seed=seed, prefix="bench", candidates=candidates)
    ]


# ---------------------------------------------------------------------------------------------
# the tokenizer


def find_tokenizer(path: str | None) -> tuple[Any, str]:
    """A SentencePiece tokenizer: `path`, else the Mistral-7B v0.1 model that the mistral-common
    wheel ships as mistral_common/data/tokenizer.model.v1 (a Llama-2-style 32000-piece BPE with
    byte fallback and single-digit numbers). No network is used."""
    try:
        import sentencepiece
    except ImportError:
        sys.exit("engine_bench: needs `sentencepiece` (pip install sentencepiece)")
    if path is None:
        spec = importlib.util.find_spec("mistral_common")  # locates the wheel without importing it
        if spec is None or not spec.submodule_search_locations:
            sys.exit(
                "engine_bench: needs `mistral-common` for its bundled tokenizer file, or "
                "--tokenizer PATH to a Llama-2 tokenizer.model"
            )
        file = Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"
        origin = (
            f"mistral-common {importlib.metadata.version('mistral-common')}: "
            "mistral_common/data/tokenizer.model.v1 (Mistral-7B v0.1, Llama-2-style SentencePiece BPE)"
        )
    else:
        file = Path(path)
        origin = str(file)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(file))
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return processor, f"{origin}; {processor.vocab_size()} pieces; sha256 {digest}"


# ---------------------------------------------------------------------------------------------
# sim-llm


def start_sim(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (workdir / "sim-llm.log").open("wb")
    proc = subprocess.Popen(
        [CLI, "sim-llm", "--port", str(port), "--seed", "1"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        cwd=workdir,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
    except (OSError, RuntimeError):
        proc.kill()
        raise RuntimeError(f"sim-llm did not answer: {(workdir / 'sim-llm.log').read_text()}") from None
    return proc, port


# ---------------------------------------------------------------------------------------------
# the passes


class Recorder:
    """Wraps the shared HTTP transport and keeps one session's calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[Any] = []

    async def complete(
        self, messages: Any, response_format: Any, deadline: float, max_tokens: int | None = None
    ) -> Any:
        call = await self.inner.complete(messages, response_format, deadline, max_tokens)
        self.calls.append(call)
        return call


def settings_for(prompts: str, base_url: str | None) -> Any:
    from worker.config import Settings

    return Settings(
        llm_base_url=base_url,
        llm_model=SIM_MODEL,
        llm_structured="json_schema",
        prompts=prompts,
        max_steps=5,
        deadline_ms=60_000,
        llm_reasks=1,
        aspects={},
        llm_max_inflight=16,
    )


async def record(requests: list[Any], prompts: str, base_url: str) -> list[tuple[Any, list[Any]]]:
    """First pass, over HTTP: every session's result and LLM calls."""
    from worker.policies.chat import OpenAIChat
    from worker.service import Reranker

    settings = settings_for(prompts, base_url)
    chat = OpenAIChat(settings)
    await chat.check()
    template = Reranker(settings, chat)
    limit = asyncio.Semaphore(16)

    async def one(request: Any) -> tuple[Any, list[Any]]:
        recorder = Recorder(chat)
        reranker = Reranker(settings, recorder, prompts=template.prompts)
        async with limit:
            result, _ = await reranker.run(request)
        return result, recorder.calls

    try:
        return await asyncio.gather(*(one(r) for r in requests))
    finally:
        await chat.close()


async def replay_cpu(
    requests: list[Any], sessions: list[tuple[Any, list[Any]]], rounds: int
) -> tuple[float, int, int]:
    """Second pass, no HTTP: the same walks from recorded answers. Returns the best round's
    CPU seconds, its node steps (Stop excluded) and LLM calls."""
    from worker.service import Reranker

    reranker = Reranker(settings_for("default", None), chat=None)
    best = float("inf")
    steps = calls = 0
    for _ in range(rounds):
        steps = calls = 0
        started = time.process_time()
        for request, (recorded_result, recorded_calls) in zip(requests, sessions, strict=True):
            result, outcome = await reranker.run(request, recorded=recorded_calls, live=False)
            steps += sum(1 for s in outcome.steps if s.node != "stop")
            calls += result.llm_calls
            if (result.ranking, result.path) != (recorded_result.ranking, recorded_result.path):
                raise RuntimeError(f"replay of {request.request_id} differs from the recording")
        best = min(best, time.process_time() - started)
    return best, steps, calls


def prompt_text(call: Any) -> str:
    return "\n".join(str(m.get("content", "")) for m in call.messages)


def prefix_shares(sessions: list[tuple[Any, list[Any]]]) -> list[float]:
    shares = []
    for _, calls in sessions:
        first = prompt_text(calls[0]).encode()
        for call in calls[1:]:
            later = prompt_text(call).encode()
            common = 0
            for a, b in zip(first, later):  # noqa: B905 (prefix of unequal lengths)
                if a != b:
                    break
                common += 1
            shares.append(common / len(later))
    return shares


def tokens_per_call(sessions: list[tuple[Any, list[Any]]], sp: Any) -> tuple[float, int]:
    counts = [
        sum(len(sp.encode(str(m.get("content", "")))) for m in call.messages)
        for _, calls in sessions
        for call in calls
    ]
    return statistics.fmean(counts), len(counts)


def breakdown(sessions: list[tuple[Any, list[Any]]], sp: Any) -> str:
    """Where the default set's tokens go: the constant first message, its candidate lines, and
    the per-step message."""
    system, candidates, rest = [], [], []
    for _, calls in sessions:
        for call in calls:
            first = str(call.messages[0].get("content", ""))
            system.append(len(sp.encode(first)))
            lines = [ln for ln in first.splitlines() if ln[:1].isdigit() and ". " in ln[:5]]
            candidates.append(sum(len(sp.encode(ln)) for ln in lines))
            rest.append(sum(len(sp.encode(str(m.get("content", "")))) for m in call.messages[1:]))
    return (
        f"first message {statistics.fmean(system):.0f} (candidate lines "
        f"{statistics.fmean(candidates):.0f}), later messages {statistics.fmean(rest):.0f}"
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="replay rounds for the CPU figure")
    parser.add_argument("--tokenizer", help="a SentencePiece tokenizer.model to count with")
    args = parser.parse_args()

    from worker.schemas import parse_request

    sp, tokenizer = find_tokenizer(args.tokenizer)
    requests = [parse_request(raw) for raw in make_requests(args.requests, args.candidates)]
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_sim(Path(tmp))
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            started = time.monotonic()
            ours = await record(requests, "default", base_url)
            paper = await record(requests, "paper", base_url)
            http_s = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    cpu, steps, calls = await replay_cpu(requests, ours, args.rounds)
    cpu_ms = cpu * 1000 / steps
    ours_tokens, ours_calls = tokens_per_call(ours, sp)
    paper_tokens, paper_calls = tokens_per_call(paper, sp)
    ratio = ours_tokens / paper_tokens
    shares = prefix_shares(ours)
    paper_shares = prefix_shares(paper)
    share = statistics.fmean(shares)
    statuses = {r.status for r, _ in ours + paper}

    print(
        f"engine benchmark: {len(requests)} requests x {args.candidates} candidates against "
        f"sim-llm (SIMULATED, zero latency, seed 1); recording both prompt sets took {http_s:.1f} s "
        f"over HTTP; statuses {sorted(statuses)}"
    )
    print(f"tokenizer: {tokenizer}")
    print(
        f"(1) engine CPU per node step, replayed from recordings (no HTTP): {cpu_ms:.3f} ms "
        f"({steps} steps, {calls} LLM calls, best of {args.rounds} rounds of "
        f"{cpu * 1000:.0f} ms)  target < 1 ms  {verdict(cpu_ms < 1.0)}"
    )
    print(
        f"(2) prompt tokens per LLM call: default {ours_tokens:.0f} ({ours_calls} calls), "
        f"paper {paper_tokens:.0f} ({paper_calls} calls), ratio {ratio:.2f}  "
        f"target <= 0.50  {verdict(ratio <= 0.5)}"
    )
    print(f"    default tokens per call: {breakdown(ours, sp)}")
    print(
        f"(3) byte-identical prefix of the first prompt in later prompts (default): mean "
        f"{share:.1%}, min {min(shares):.1%} over {len(shares)} prompts  target >= 80%  "
        f"{verdict(share >= 0.8)}   [paper set for reference: mean "
        f"{statistics.fmean(paper_shares):.1%}]"
    )
    return 0 if cpu_ms < 1.0 and ratio <= 0.5 and share >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
