"""Fixtures of the auditor and replay tests: an own PostgreSQL database per test session (with the
read-only role granted on it, as infra/postgres/reader.sql does for the real one), filled with a
few hundred sessions walked against sim-llm."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from audit_helpers import (
    MALFORMED,
    N_SESSIONS,
    REPO,
    SIM_SEED,
    make_requests,
    reader_statements,
    rerank_into,
    start_sim,
)


@dataclass
class AuditDb:
    name: str
    url: str
    reader_url: str


@pytest.fixture(scope="session")
def audit_db(fresh_database, pg_exec) -> Iterator[AuditDb]:
    """A fresh, migrated database for the audit tests with the reader role granted, dropped at the end."""
    with fresh_database("llm4rerank_test_audit") as (name, url):
        pg_exec(reader_statements(name), database=name)
        yield AuditDb(name, url, f"postgresql+asyncpg://llm4rerank_reader@127.0.0.1:5432/{name}")


@dataclass
class Populated:
    db: AuditDb
    request_ids: list[str]
    seconds: float


@pytest.fixture(scope="session")
def populated(audit_db: AuditDb, tmp_path_factory: pytest.TempPathFactory) -> Populated:
    """N_SESSIONS sessions walked against sim-llm with malformed answers (so repairs happen)."""
    tmp = tmp_path_factory.mktemp("populate")
    sim = start_sim(tmp / "sim", "--seed", str(SIM_SEED), "--malformed-rate", str(MALFORMED))
    try:
        requests = make_requests(N_SESSIONS)
        started = time.monotonic()
        done = rerank_into(audit_db.url, requests, tmp, sim)
        seconds = time.monotonic() - started
    finally:
        sim.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    return Populated(audit_db, [r["request_id"] for r in requests], seconds)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = REPO / "artifacts"
    path.mkdir(exist_ok=True)
    return path
