"""sessions and steps partitioned by time (PostgreSQL): sessions by received_at, steps by their
session's received_at (new column steps.session_received_at, part of steps' foreign key), with a
DEFAULT partition each and range partitions created for the existing rows and ahead of now.

Unique keys of a partitioned table must hold the partition key, so sessions.request_id is no
longer unique in the schema (an index serves lookups); the store keeps request_ids unique with a
transaction-scoped advisory lock per request_id (worker/store/store.py). Existing rows are copied
into the partitioned tables (one pass; plan for the store's size). SQLite stays unpartitioned and
only gains steps.session_received_at.

prompt_parts (0006) stays one table, shared by hash across sessions; it gains last_used (the day a
step referring to the part was last written; today for the parts already there), which retention
uses to delete parts no kept step refers to. Every index of sessions and steps (0007's keyset,
partial, GIN and trigram ones included) is recreated on the partitioned tables, from which
PostgreSQL builds it on each partition.

Revision ID: 0008_partitions
Revises: 0007_audit_indexes
"""

import sqlalchemy as sa
from alembic import op

from worker.store.partitions import Interval, create_default, ensure_partitions, occupied

revision = "0008_partitions"
down_revision = "0007_audit_indexes"
branch_labels = None
depends_on = None

OLD = "_unpartitioned"
# unique keys rebuilt with the partition key (or, for request_id, as a plain index)
UNIQUE = {
    "sessions": [
        "ALTER TABLE sessions ADD CONSTRAINT sessions_pkey PRIMARY KEY (id, received_at)",
        "CREATE INDEX ix_sessions_request_id ON sessions (request_id)",
    ],
    "steps": [
        "ALTER TABLE steps ADD CONSTRAINT steps_pkey PRIMARY KEY (id, session_received_at)",
        "ALTER TABLE steps ADD CONSTRAINT uq_steps_session_step "
        "UNIQUE (session_id, session_received_at, step)",
        "ALTER TABLE steps ADD CONSTRAINT steps_session_id_fkey "
        "FOREIGN KEY (session_id, session_received_at) "
        "REFERENCES sessions (id, received_at) ON DELETE CASCADE",
    ],
}


def _settings() -> tuple[Interval, int]:
    try:
        from worker.config import Settings

        settings = Settings()
        return settings.partition_interval, settings.partitions_ahead
    except Exception:  # a migration must not fail on an unrelated setting
        return "day", 7


def _set_aside(conn: sa.Connection) -> dict[str, str | None]:
    """Rename steps and sessions to their OLD names, their id sequences freed to outlive them."""
    sequences = {}
    for table in ("steps", "sessions"):
        op.execute(f"ALTER TABLE {table} RENAME TO {table}{OLD}")
        sequences[table] = conn.execute(
            sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table + OLD}
        ).scalar()
        if sequences[table]:  # kept when the old table is dropped
            op.execute(f"ALTER SEQUENCE {sequences[table]} OWNED BY NONE")
    return sequences


def upgrade() -> None:
    conn = op.get_bind()
    # SQLite cannot ADD COLUMN with a non-constant default to a table with rows: copy it instead
    with op.batch_alter_table(
        "prompt_parts", recreate="auto" if conn.dialect.name == "postgresql" else "always"
    ) as batch:
        batch.add_column(
            sa.Column("last_used", sa.Date(), nullable=False, server_default=sa.text("CURRENT_DATE"))
        )
    op.create_index("ix_prompt_parts_last_used", "prompt_parts", ["last_used"])
    if conn.dialect.name != "postgresql":
        with op.batch_alter_table("steps") as batch:
            batch.add_column(sa.Column("session_received_at", sa.DateTime(timezone=True)))
        op.execute(
            "UPDATE steps SET session_received_at = "
            "(SELECT received_at FROM sessions WHERE sessions.id = steps.session_id)"
        )
        return
    indexes = {t: _plain_indexes_for(conn, t) for t in ("sessions", "steps")}
    sequences = _set_aside(conn)
    op.execute(
        f"CREATE TABLE sessions (LIKE sessions{OLD} INCLUDING DEFAULTS) PARTITION BY RANGE (received_at)"
    )
    op.execute(
        f"CREATE TABLE steps (LIKE steps{OLD} INCLUDING DEFAULTS, "
        "session_received_at TIMESTAMP WITH TIME ZONE NOT NULL) "
        "PARTITION BY RANGE (session_received_at)"
    )
    for table in ("sessions", "steps"):
        create_default(conn, table)
    interval, ahead = _settings()
    ensure_partitions(
        conn,
        interval,
        ahead,
        extra=occupied(conn, f"sessions{OLD}", "received_at", interval),
    )
    op.execute(f"INSERT INTO sessions SELECT * FROM sessions{OLD}")
    op.execute(
        f"INSERT INTO steps SELECT st.*, s.received_at FROM steps{OLD} st "
        f"JOIN sessions{OLD} s ON s.id = st.session_id"
    )
    op.execute(f"DROP TABLE steps{OLD}")
    op.execute(f"DROP TABLE sessions{OLD}")
    for table in ("sessions", "steps"):
        if sequences[table]:
            op.execute(f"ALTER SEQUENCE {sequences[table]} OWNED BY {table}.id")
        for statement in UNIQUE[table] + indexes[table]:
            op.execute(statement)


def _plain_indexes_for(conn: sa.Connection, table: str) -> list[str]:
    """CREATE INDEX statements of the table's non-unique indexes, read before its rename (they
    name the table, which is the new one when they run)."""
    rows = conn.execute(
        sa.text(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), i.indisunique "
            "FROM pg_index i WHERE i.indrelid = CAST(:t AS regclass)"
        ),
        {"t": table},
    ).all()
    known = {f"{table}_pkey", "sessions_request_id_key", "uq_steps_session_step"}
    statements = []
    for name, definition, unique in rows:
        if name in known:
            continue
        if unique:
            raise RuntimeError(
                f"unique index {name} on {table} needs the partition key; "
                "extend migration 0008_partitions for it"
            )
        statements.append(definition.replace(" ON ONLY ", " ON "))
    return statements


def downgrade() -> None:
    """Back to plain tables (rows kept; request_id unique again: fails if duplicates arrived
    after their first session was dropped by retention)."""
    conn = op.get_bind()
    op.drop_index("ix_prompt_parts_last_used", table_name="prompt_parts")
    with op.batch_alter_table("prompt_parts") as batch:
        batch.drop_column("last_used")
    if conn.dialect.name != "postgresql":
        with op.batch_alter_table("steps") as batch:
            batch.drop_column("session_received_at")
        return
    indexes = {
        t: [s for s in _plain_indexes_for(conn, t) if "ix_sessions_request_id" not in s]
        for t in ("sessions", "steps")
    }
    sequences = _set_aside(conn)
    op.execute(f"CREATE TABLE sessions (LIKE sessions{OLD} INCLUDING DEFAULTS)")
    op.execute(f"CREATE TABLE steps (LIKE steps{OLD} INCLUDING DEFAULTS)")
    op.execute(f"INSERT INTO sessions SELECT * FROM sessions{OLD}")
    op.execute(f"INSERT INTO steps SELECT * FROM steps{OLD}")
    op.execute(f"DROP TABLE steps{OLD} CASCADE")
    op.execute(f"DROP TABLE sessions{OLD} CASCADE")
    op.execute("ALTER TABLE steps DROP COLUMN session_received_at")
    for table in ("sessions", "steps"):
        if sequences[table]:
            op.execute(f"ALTER SEQUENCE {sequences[table]} OWNED BY {table}.id")
    op.execute("ALTER TABLE sessions ADD PRIMARY KEY (id)")
    op.execute("ALTER TABLE sessions ADD CONSTRAINT sessions_request_id_key UNIQUE (request_id)")
    op.execute("ALTER TABLE steps ADD PRIMARY KEY (id)")
    op.execute("ALTER TABLE steps ADD CONSTRAINT uq_steps_session_step UNIQUE (session_id, step)")
    op.execute(
        "ALTER TABLE steps ADD CONSTRAINT steps_session_id_fkey FOREIGN KEY (session_id) "
        "REFERENCES sessions (id) ON DELETE CASCADE"
    )
    for table in ("sessions", "steps"):
        for statement in indexes[table]:
            op.execute(statement)
