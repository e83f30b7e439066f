"""Fixtures for tests against the real services: sim-llm as a process, a throwaway PostgreSQL
database, unique Kafka topics and worker processes. `make test` starts Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import cases  # noqa: F401  (registers the fast lane's `dev` hypothesis profile before it loads)
import pytest
import service_kit
from service_kit import KAFKA, PG_ADMIN, SimLLM, free_port, start_sim

CLI = service_kit.CLI
SIM_MODEL = service_kit.SIM_MODEL

# Fixtures that start or reach a service (Kafka, PostgreSQL, sim-llm, llama.cpp, a browser): a test
# using one, directly or through another fixture, is marked `integration`, so that
# `pytest -m "not integration"` (make test-fast) runs without any service.
SERVICE_FIXTURES = frozenset(
    {
        "sim_llm",
        "sim",
        "pg_url",
        "fresh_database",
        "pg_exec",
        "kafka",
        "stream_env",
        "start_worker",
        "llama_server",
        "audit_db",
        "populated",
        "owned_services",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimLLM]:
    """One fault-free sim-llm (seed 1) shared by the session; tests must not change its faults."""
    started = start_sim(tmp_path_factory.mktemp("sim"))
    yield started
    started.stop()


@pytest.fixture
def sim_llm(tmp_path: Path) -> Iterator[Callable[..., SimLLM]]:
    """Fresh sim-llm processes (the fault dice start from zero), stopped after the test:
    `sim_llm(*cli_args, seed=1)`."""
    started: list[SimLLM] = []

    def make(*args: str, seed: int | None = 1) -> SimLLM:
        sim = start_sim(tmp_path / f"sim-{len(started)}", *args, seed=seed)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def _pg(statement: str, database: str = "postgres") -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{database}")
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@contextmanager
def _fresh_database(prefix: str) -> Iterator[tuple[str, str]]:
    """(name, url) of a new, migrated database, dropped on exit: tests never touch shared data."""
    from worker.store.migrate import upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        _pg(f'CREATE DATABASE "{name}"')
    except OSError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} ({exc}); run `make up`")
    try:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        upgrade(url)
        yield name, url
    finally:
        _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def fresh_database() -> Callable[[str], AbstractContextManager[tuple[str, str]]]:
    return _fresh_database


@pytest.fixture(scope="session")
def pg_exec() -> Callable[..., None]:
    """Run one statement as the postgres superuser (in `database`)."""
    return _pg


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated database for this test session, dropped at the end."""
    with _fresh_database("llm4rerank_test") as (_, url):
        yield url


@pytest.fixture(scope="session")
def kafka() -> str:
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=10000)
        await admin.start()
        await admin.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        pytest.fail(f"Kafka is not reachable at {KAFKA} ({exc}); run `make up`")
    return KAFKA


class WorkerProcess:
    """`llm4rerank worker` as a child process with its own topics, group and metrics port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [CLI, "worker"], env=self.env, stdout=out, stderr=out, start_new_session=True
        )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def stream_env(tmp_path: Path, kafka: str, pg_url: str) -> dict[str, str]:
    """Settings for one test's worker: unique topics and consumer group, the test database."""
    tag = uuid.uuid4().hex[:8]
    return {
        **os.environ,
        "LLM4RERANK_KAFKA_BOOTSTRAP": kafka,
        "LLM4RERANK_DATABASE_URL": pg_url,
        "LLM4RERANK_REQUEST_TOPIC": f"test.{tag}.requests",
        "LLM4RERANK_RESULT_TOPIC": f"test.{tag}.results",
        "LLM4RERANK_DLQ_TOPIC": f"test.{tag}.dlq",
        "LLM4RERANK_CONSUMER_GROUP": f"test-{tag}",
        "LLM4RERANK_METRICS_PORT": str(free_port()),
        "LLM4RERANK_LLM_MODEL": SIM_MODEL,
        "LLM4RERANK_STATE_DIR": str(tmp_path / "state"),
        "LLM4RERANK_LEASE_S": "6",
        "LLM4RERANK_KAFKA_SESSION_TIMEOUT_S": "6",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[type[WorkerProcess]]:
    """Start a worker process with the given environment; all are killed at the end."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log").start()
        started.append(worker)
        return worker

    yield start  # type: ignore[misc]
    for worker in started:
        if worker.alive():
            worker.kill(signal.SIGKILL)


def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A REAL llama.cpp server (the xllamacpp wheel) serving a tiny random-weight Llama GGUF
    built here in seconds; one slot of 2048 tokens, so answers at temperature 0 repeat."""
    from real_server_kit import LlamaServer, build_gguf

    folder = tmp_path_factory.mktemp("llama")
    model = build_gguf(folder / "tiny-random-llama.gguf")
    server = LlamaServer(model, n_ctx=2048, n_parallel=1, log=folder / "server.log").start()
    try:
        yield server
    finally:
        server.stop()
