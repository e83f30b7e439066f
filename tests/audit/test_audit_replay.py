"""Replay against real PostgreSQL and sim-llm: recorded replay reproduces every stored session, a
changed repair rule is reported session by session, live replay stores linked sessions and a
report."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import CLI, SIM_MODEL, start_sim
from sqlalchemy import select

from worker.audit.db import read_only_engine
from worker.audit.filters import TraceFilters
from worker.audit.queries import StoredSession, TraceQueries
from worker.config import Settings
from worker.replay.replayer import Comparison, replay_recorded, select_sessions
from worker.replay.report import build_report, render_diff
from worker.store.tables import sessions

pytestmark = pytest.mark.integration


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


async def _load_all(url: str) -> list[StoredSession]:
    engine = read_only_engine(url)
    try:
        return [s async for s in select_sessions(TraceQueries(engine), TraceFilters(replays="exclude"))]
    finally:
        await engine.dispose()


async def _replay_all(url: str) -> list[Comparison]:
    engine = read_only_engine(url)
    try:
        filters = TraceFilters(replays="exclude")
        return await replay_recorded(Settings(), select_sessions(TraceQueries(engine), filters))
    finally:
        await engine.dispose()


def test_recorded_replay_reproduces_every_stored_session(populated: Any, tmp_path: Path) -> None:
    report = tmp_path / "recorded.json"
    started = time.monotonic()
    done = cli("replay", "--db", populated.db.url, "--report", str(report))
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(report.read_text())
    n = len(populated.request_ids)
    assert data["sessions"] == n and data["reproduced"] == n and data["identical_share"] == 1.0
    assert data["path_changes"] == 0 and data["status_changes"] == {} and data["errors"] == 0
    assert data["kendall_tau"]["min"] == 1.0 and data["tokens"]["delta_mean"] == 0
    assert "alpha_ndcg@10" in data["metrics"] and data["metrics"]["mad"]["delta"] == 0
    assert f"reproduced (recorded)        {n}/{n}" in done.stdout
    print(
        f"\nrecorded replay: {n} sessions reproduced in {seconds:.1f} s (CLI, incl. start-up); "
        f"storing them took {populated.seconds:.1f} s"
    )

    one = cli("replay", populated.request_ids[7], "--db", populated.db.url, "--report", str(report))
    assert one.returncode == 0 and json.loads(report.read_text())["sessions"] == 1
    missing = cli("replay", "no-such-session", "--db", populated.db.url, "--report", str(report))
    assert missing.returncode == 1 and "no-such-session" in missing.stderr


def _accepted_repairs(stored: StoredSession) -> bool:
    """A step kept a list that needed missing items appended (the call was not re-asked)."""
    for step in stored.steps:
        for note in step.notes:
            m = re.match(r"call (\d+): appended", note)
            if m and f"call {m.group(1)} unusable" not in " ".join(step.notes):
                return True
    return False


def test_changed_repair_rule_is_reported_by_session(populated: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put missing items first instead of last: exactly the sessions whose kept answers needed
    that repair must differ, each reported with the step, the stored and the replayed list."""
    import worker.engine.parse as parse

    stored = asyncio.run(_load_all(populated.db.url))
    expected = {s.request_id for s in stored if _accepted_repairs(s)}
    assert len(expected) >= 5, "sim-llm's malformed answers should have needed repairs"
    print(f"\nchanged repair rule: {len(expected)} of {len(stored)} sessions affected")
    original = parse.repair

    def missing_first(
        tokens: list[str], candidates: list[str], previous: list[str], aliases: bool, notes: list[str]
    ) -> tuple[list[str], parse.Repair]:
        ranking, fix = original(tokens, candidates, previous, aliases, notes)
        return ranking[fix.kept :] + ranking[: fix.kept], fix

    monkeypatch.setattr(parse, "repair", missing_first)
    comparisons = asyncio.run(_replay_all(populated.db.url))
    differ = {c.original.request_id for c in comparisons if not c.reproduced}
    assert differ == expected
    sample = next(c for c in comparisons if not c.reproduced)
    text = render_diff(sample)
    assert text.startswith(f"DIFFERS {sample.original.request_id}")
    assert "ranking" in text and "stored:" in text and "replayed:" in text
    report = build_report("recorded", comparisons)
    assert report["reproduced"] == len(comparisons) - len(expected)
    assert report["identical_rankings"] < len(comparisons)


async def _replays_of(url: str, tag: str) -> list[dict[str, Any]]:
    engine = read_only_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(sessions).where(sessions.c.request_id.like(f"%~{tag}")))
            return [dict(r) for r in rows.mappings()]
    finally:
        await engine.dispose()


def test_live_replay_stores_linked_sessions_and_a_report(populated: Any, tmp_path: Path) -> None:
    sim = start_sim(tmp_path / "sim", "--seed", "11")
    try:
        report = tmp_path / "live.json"
        args = [
            "replay",
            "--mode",
            "live",
            "--db",
            populated.db.url,
            "--base-url",
            sim.url + "/v1",
            "--llm-model",
            SIM_MODEL,
            "--limit",
            "24",
            "--tag",
            "t1",
            "--concurrency",
            "6",
            "--report",
            str(report),
        ]
        done = cli(*args)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        data = json.loads(report.read_text())
        assert data["mode"] == "live" and data["sessions"] == 24 and data["replayed"] == 24
        assert 0.0 <= data["identical_share"] <= 1.0 and data["errors"] == 0
        assert {"alpha_ndcg@10", "mad"} <= set(data["metrics"])
        assert data["config"]["llm_base_url"] == sim.url + "/v1"
        assert "identical final rankings" in done.stdout

        rows = asyncio.run(_replays_of(populated.db.url, "t1"))
        assert len(rows) == 24
        originals = set(populated.request_ids[:24])
        for row in rows:
            assert row["replay_mode"] == "live" and row["replay_of"] in originals
            assert row["request_id"] == f"{row['replay_of']}~t1" and row["status"] in ("ok", "degraded")
            # the original request, stored again (once, as its text)
            assert json.loads(row["request_text"])["candidates"] and row["request"] is None
        per = {p["request_id"]: p for p in data["per_session"]}
        assert set(per) == originals and all(p["replay_id"].endswith("~t1") for p in per.values())

        again = cli(*args)  # same tag: nothing is called or stored twice
        assert again.returncode == 0
        assert len(asyncio.run(_replays_of(populated.db.url, "t1"))) == 24
        assert "stored by an earlier run" in report.read_text()

        listed = cli(
            "trace", "list", "--db", populated.db.url, "--replay-of", populated.request_ids[0], "--json"
        )
        assert [json.loads(line)["request_id"] for line in listed.stdout.splitlines()] == [
            f"{populated.request_ids[0]}~t1"
        ]

        paper = cli(
            "replay",
            "--mode",
            "live",
            "--db",
            populated.db.url,
            "--base-url",
            sim.url + "/v1",
            "--llm-model",
            SIM_MODEL,
            "--prompts",
            "paper",
            "--structured",
            "none",
            "--max-steps",
            "2",
            "--tag",
            "paper2",
            "--report",
            str(tmp_path / "paper.json"),
            *populated.request_ids[30:34],
        )
        assert paper.returncode == 0, paper.stdout[-2000:] + paper.stderr[-2000:]
        rows = asyncio.run(_replays_of(populated.db.url, "paper2"))
        assert len(rows) == 4
        assert all(r["prompt_version"].startswith("paper-") and r["llm_calls"] <= 2 for r in rows)
    finally:
        sim.stop()

    # the live sessions (paper prompts, text answers, a step cap) replay from their own record
    recorded = cli(
        "replay",
        "--db",
        populated.db.url,
        "--report",
        str(tmp_path / "again.json"),
        *(r["request_id"] for r in rows),
    )
    assert recorded.returncode == 0, recorded.stdout[-2000:]
    assert json.loads((tmp_path / "again.json").read_text())["reproduced"] == 4
    bad = cli(
        "replay",
        "--mode",
        "live",
        "--db",
        populated.db.url,
        "--prompts",
        "nope",
        "--base-url",
        "http://127.0.0.1:9/v1",
    )
    assert bad.returncode == 2 and "prompt set" in bad.stderr


async def test_recorded_replay_uses_the_stored_run_config_not_todays_settings(populated: Any) -> None:
    """Sessions keep the configuration they ran with, so a deployment whose defaults changed since
    (step cap, re-asks, output mode) still reproduces them exactly."""
    stored = await _load_all(populated.db.url)
    assert stored and all(s.row.get("run_config") for s in stored)
    changed = Settings(max_steps=1, llm_reasks=0, llm_structured="none", aspects={})
    engine = read_only_engine(populated.db.url)
    try:
        results = await replay_recorded(
            changed, select_sessions(TraceQueries(engine), TraceFilters(replays="exclude"))
        )
    finally:
        await engine.dispose()
    assert len(results) == len(stored)
    assert [c.request["request_id"] for c in results if not c.reproduced] == []
