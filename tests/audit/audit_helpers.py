"""Helpers of the auditor and replay tests: the audit-api child process (sim-llm comes from
service_kit.py), request generation, and the reader role's grants on a test database."""

from __future__ import annotations

import json
import os
import random
import subprocess
import uuid
from pathlib import Path

from service_kit import CLI, KAFKA, REPO, SIM_MODEL, SimLLM, free_port, start_sim, wait_http

__all__ = ["CLI", "KAFKA", "REPO", "SIM_MODEL", "start_sim"]

N_SESSIONS = 300
SIM_SEED = 2
MALFORMED = 0.15  # with SIM_SEED: a few dozen of the sessions need their lists repaired
TOKEN = "audit-test-token-" + uuid.uuid4().hex


class Process:
    """A CLI child process on a free port, stopped by its own pid."""

    def __init__(
        self, args: list[str], ready_path: str, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        out = log.open("ab")
        self.proc = subprocess.Popen(
            [CLI, *args, "--port", str(self.port)], stdout=out, stderr=out, env=env or dict(os.environ)
        )
        out.close()
        wait_http(self.url + ready_path, proc=self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def reader_statements(database: str) -> str:
    """infra/postgres/reader.sql, granting on `database` instead of llm4rerank."""
    sql = (REPO / "infra" / "postgres" / "reader.sql").read_text()
    adapted = sql.replace("ON DATABASE llm4rerank ", f'ON DATABASE "{database}" ')
    assert adapted != sql, "reader.sql no longer grants CONNECT ON DATABASE llm4rerank"
    return adapted


def make_requests(n: int, seed: int = 7, prefix: str = "gen") -> list[dict]:
    """n requests varied from examples/requests.jsonl: new ids, users and candidate orders."""
    base = [
        json.loads(line)
        for line in (REPO / "examples" / "requests.jsonl").read_text().splitlines()
        if line.strip()
    ]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        request = json.loads(json.dumps(base[i % len(base)]))
        request["request_id"] = f"{prefix}-{i:04d}"
        request["user"]["user_id"] = f"u{rng.randrange(40)}"
        rng.shuffle(request["candidates"])
        out.append(request)
    return out


def rerank_into(url: str, requests: list[dict], tmp: Path, sim: SimLLM) -> subprocess.CompletedProcess[str]:
    source = tmp / f"requests-{uuid.uuid4().hex[:6]}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in requests))
    env = {**os.environ, "LLM4RERANK_LLM_BASE_URL": sim.url + "/v1", "LLM4RERANK_LLM_MODEL": SIM_MODEL}
    return subprocess.run(
        [CLI, "rerank", str(source), "--store", url, "--out", str(tmp / "results.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
