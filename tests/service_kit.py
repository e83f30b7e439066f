"""The one test kit for local services: shared constants, a free port, waiting for a server to
answer, and the SIMULATED LLM (`llm4rerank sim-llm`) as a child process. Every test that starts
sim-llm starts it here, with one environment and port policy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from worker.simllm import SIMULATED_MODEL

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "llm4rerank")
EXAMPLES = REPO / "examples" / "requests.jsonl"
SIM_MODEL = SIMULATED_MODEL
PG_ADMIN = os.environ.get("LLM4RERANK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
KAFKA = os.environ.get("LLM4RERANK_TEST_KAFKA", "127.0.0.1:9092")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until `url` answers; fails early when `proc`, the server behind it, has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {url} answered") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any LLM4RERANK_* variable of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4RERANK_")}
    env.update(extra)
    return env


class SimLLM:
    """`llm4rerank sim-llm` on a free port: the caller's LLM4RERANK_* variables are dropped and it
    runs in `folder` (so no `.env` of the checkout applies); stdout and stderr go to `log`."""

    def __init__(self, folder: Path, *args: str, seed: int | None = 1) -> None:
        self.folder = folder
        self.args = (*args, "--seed", str(seed)) if seed is not None and "--seed" not in args else args
        self.port = 0
        self.log = folder / "sim.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, attempts: int = 3) -> SimLLM:
        """Start and wait until GET /v1/models answers; another port if the chosen one was taken."""
        for _ in range(attempts):
            self.port = free_port()
            self.log = self.folder / f"sim-{self.port}.log"
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [CLI, "sim-llm", "--port", str(self.port), *self.args],
                    stdout=out,
                    stderr=out,
                    env=clean_env(),
                    cwd=self.folder,
                )
            try:
                wait_http(f"{self.base_url}/models", timeout_s=20, proc=self.proc)
                return self
            except (OSError, RuntimeError):
                self.stop()
        raise RuntimeError(f"sim-llm did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment for a CLI that talks to this sim-llm."""
        return clean_env(
            LLM4RERANK_LLM_BASE_URL=self.base_url,
            LLM4RERANK_LLM_MODEL=SIM_MODEL,
            LLM4RERANK_LLM_RETRY_MAX_WAIT_S="0.05",
            **extra,
        )

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.loads(response.read())

    def faults(self, **update: float) -> Any:
        """Change the fault dice (POST /sim/faults); returns the server's counters and settings."""
        request = urllib.request.Request(
            f"{self.url}/sim/faults", data=json.dumps(update).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_sim(folder: Path, *args: str, seed: int | None = 1) -> SimLLM:
    """A started sim-llm in `folder` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    return SimLLM(folder, *args, seed=seed).start()
