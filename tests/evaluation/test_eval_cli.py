"""`llm4rerank eval` end to end: generated data, the llm policy through sim-llm (the shared session
fixture of tests/conftest.py), the heuristic policy and the baselines; and the one-line errors on
bad input."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from service_kit import CLI, SIM_MODEL
from typer.testing import CliRunner

from worker.cli import app

BIN = CLI
USERS, GOALS = 15, ["A", "D", "F"]


def _env(url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4RERANK_")}
    if url:
        env |= {"LLM4RERANK_LLM_BASE_URL": url, "LLM4RERANK_LLM_MODEL": SIM_MODEL}
    return env


def _eval(out: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN),
            "eval",
            "--dataset",
            "synthetic",
            "--users",
            str(USERS),
            "--goals",
            ",".join(GOALS),
            "--policy",
            "llm,heuristic,upstream,random,popularity,mmr,dpp,fair",
            "--out",
            str(out),
            "--concurrency",
            "4",
            "--seed",
            "3",
            "--no-progress",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=_env(url),
        cwd=out.parent,
        timeout=240,
    )


def test_eval_end_to_end_through_sim_llm(sim, tmp_path):
    out = tmp_path / "report"
    done = _eval(out, sim.base_url)
    assert done.returncode == 0, done.stderr
    assert "SIMULATED" in done.stdout and "| LLM4Rerank-D |" in done.stdout
    total = 2 * USERS * len(GOALS) + 6 * USERS
    assert f"ran {total} requests, reused 0" in done.stdout

    md = (out / "report.md").read_text()
    assert "SIMULATED LLM" in md and SIM_MODEL in md
    for row in [
        "LLM4Rerank-A",
        "LLM4Rerank-D",
        "LLM4Rerank-F",
        "Heuristic-A",
        "Heuristic-F",
        "GMF (upstream)",
        "Random order",
        "Popularity",
        "MMR",
        "DPP (fast greedy MAP)",
        "Fair (proportional)",
    ]:
        assert f"| {row} | {USERS} |" in md
    assert "candidate protocol: **paper** (the paper's, the default)" in md
    assert "## Where the held-out item sits in the candidate lists" in md
    header = next(line for line in md.splitlines() if line.startswith("| Method | n |"))
    assert "HR@20" not in header and "HR@10" in header and header.endswith("| MAD |")
    assert "## Table 3" in md and "accuracy > diversity > stop" in md

    report = json.loads((out / "report.json").read_text())
    assert report["context"]["simulated"] is True and report["context"]["users"] == USERS
    assert report["ks"] == [10, 20]
    rows = {r["label"]: r for r in report["table2"]}
    assert len(rows) == 2 * len(GOALS) + 6
    assert "HR@20" not in report["columns"] and "MAD" in report["columns"]
    positions = report["positive_positions"]
    assert [p["position"] for p in positions] == list(range(1, 21))
    assert sum(p["count"] for p in positions) == USERS
    for row in rows.values():
        assert row["n"] == USERS
        assert row["HR@20"] == 1.0  # the held-out item is one of the 20 candidates
        assert 0 <= row["HR@10"] <= 1 and 0 < row["alpha-NDCG@10"] <= 1 and 0 <= row["MAD"] <= 1
    assert rows["LLM4Rerank-F"]["MAD"] < rows["LLM4Rerank-A"]["MAD"]
    nav = {r["label"]: r for r in report["table3"]}
    assert nav["LLM4Rerank-D"]["node_visits"]["diversity"] == 1.0
    assert nav["LLM4Rerank-F"]["node_visits"]["fairness"] == 1.0
    assert nav["LLM4Rerank-A"]["mean_steps"] == 1.0 and nav["LLM4Rerank-A"]["capped_share"] == 0.0
    use = {r["label"]: r for r in report["usage"]}
    assert use["LLM4Rerank-D"]["llm_calls"] == 2.0 and use["LLM4Rerank-D"]["prompt_tokens"] > 100
    assert use["LLM4Rerank-D"]["ok"] == USERS and use["LLM4Rerank-D"]["fallbacks"] == 0
    assert use["Heuristic-D"]["llm_calls"] == 0
    for png in ("metrics.png", "positions.png", "node_usage.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    requests = (out / "requests.jsonl").read_text().splitlines()
    assert len(requests) == USERS and len(json.loads(requests[0])["candidates"]) == 20

    # a rerun reuses every cached result; an interrupted cache is completed, nothing more
    cache = out / "cache" / "results.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == total
    again = _eval(out, sim.base_url)
    assert again.returncode == 0 and f"ran 0 requests, reused {total}" in again.stdout
    cache.write_text("\n".join(lines[:-25]) + "\n" + lines[-25][:40])  # cut mid-line
    resumed = _eval(out, sim.base_url)
    assert resumed.returncode == 0 and f"ran 25 requests, reused {total - 25}" in resumed.stdout
    assert json.loads((out / "report.json").read_text())["table2"] == report["table2"]

    # another setup in the same folder is refused with the fix named
    other = _eval(out, sim.base_url, "--k", "5")
    assert other.returncode == 0  # k only changes the report
    other = subprocess.run(
        [str(BIN), "eval", "--users", "7", "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=_env(None),
        cwd=tmp_path,
        timeout=120,
    )
    assert other.returncode == 2 and "--fresh" in other.stderr and "users" in other.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "ml-1m"], "--data-dir"),
        (["--dataset", "ml-1m", "--data-dir", "{tmp}"], "ratings.dat, movies.dat not found"),
        (["--dataset", "kuairand", "--data-dir", "{tmp}"], "log_"),
        (["--dataset", "douban", "--data-dir", "{tmp}"], "ratings.csv"),
        (["--dataset", "csv", "--data-dir", "{tmp}/x.csv"], "not found"),
        (["--dataset", "imdb"], "unknown"),
        (["--goals", "A,Z"], "--goals: unknown Z"),
        (["--policy", "heuristic,magic"], "--policy: unknown magic"),
        (["--k", "ten"], "--k"),
        (["--protocol", "shuffled"], "--protocol"),
        (["--policy", "llm"], "LLM4RERANK_LLM_BASE_URL"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_fix(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("LLM4RERANK_")]:
        monkeypatch.delenv(key)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(app, ["eval", *args, "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
