"""Column compression of the trace tables, in one place: the migration applies it now, and code
that creates a table or a partition later applies the same statements to it.

lz4 (where the server is built with it) compresses what PostgreSQL does compress, rows over its
~2 KB TOAST threshold (a session row with its result and request text), faster than pglz.
`toast_tuple_target` is left at its default: on PostgreSQL 15 a lower value does not make rows
under the threshold compress (measured: a 1.2 KB JSONB row stays 1.2 KB with
toast_tuple_target=128 and lz4, a 2 KB one drops to 89 B), and on rows over it a low target would
push values out of line into the TOAST table, which costs more than it saves here.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

COMPRESSED_COLUMNS: dict[str, tuple[str, ...]] = {
    "sessions": ("request", "request_text", "result", "run_config", "path", "final_ranking", "notes"),
    "steps": ("calls", "ranking", "removed", "offered", "notes", "repair", "withdrawn"),
}


def lz4_available(conn: Connection) -> bool:
    """Whether this server was built with lz4 (default_toast_compression accepts it)."""
    values = conn.execute(
        text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return values is not None and "lz4" in values


def storage_statements(table: str, *, base: str | None = None, lz4: bool = True) -> list[str]:
    """The ALTER statements giving `table` (a table, or a partition of `base`'s columns) its
    column compression; none for a table not listed or without lz4."""
    if not lz4:
        return []
    return [
        f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET COMPRESSION lz4'
        for column in COMPRESSED_COLUMNS.get(base or table, ())
    ]


def reset_statements(table: str, *, base: str | None = None) -> list[str]:
    """The statements undoing `storage_statements` (back to the server's default method)."""
    return [
        f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET COMPRESSION DEFAULT'
        for column in COMPRESSED_COLUMNS.get(base or table, ())
    ]


def apply_storage(conn: Connection, table: str, *, base: str | None = None) -> None:
    """Apply `storage_statements` on a PostgreSQL connection (nothing on other databases)."""
    if conn.dialect.name != "postgresql":
        return
    for statement in storage_statements(table, base=base, lz4=lz4_available(conn)):
        conn.execute(text(statement))
