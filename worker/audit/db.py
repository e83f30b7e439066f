"""Database connections for auditing: every audit read runs in read-only transactions.

The audit API connects as the read-only role `llm4rerank_reader` (created by
infra/postgres/reader.sql): `LLM4RERANK_READER_DATABASE_URL` when set, otherwise
`LLM4RERANK_DATABASE_URL` with the user replaced by `llm4rerank_reader` and the password dropped
(the writer's password is never sent as the reader's; set the reader URL when the reader needs one).
On top of the role, sessions are opened with `default_transaction_read_only`, so even a
misconfigured URL with a writing role cannot write through these engines.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ..config import Settings
from ..store.store import make_engine

READER_ROLE = "llm4rerank_reader"


def reader_url(settings: Settings) -> str:
    """The URL the audit API reads with (see the module docstring for the fallback)."""
    if settings.reader_database_url:
        return settings.reader_database_url
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return settings.database_url
    reader = URL.create(
        url.drivername,
        username=READER_ROLE,
        password=None,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    )
    return reader.render_as_string(hide_password=False)


def read_only_engine(url: str) -> AsyncEngine:
    """An engine whose every transaction is read-only (PostgreSQL) or query-only (SQLite)."""
    if url.startswith("sqlite"):
        engine = make_engine(url)

        @event.listens_for(engine.sync_engine, "connect")
        def _query_only(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA query_only = ON")
            cursor.close()

        return engine
    if make_url(url).get_driver_name() != "asyncpg":
        return make_engine(url)  # the role alone keeps it read-only
    connect_args = {
        "server_settings": {
            "default_transaction_read_only": "on",
            "application_name": "llm4rerank-audit",
        }
    }
    return make_engine(url, connect_args=connect_args)


def safe_url(url: str) -> str:
    """A URL for messages: never print a password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"
