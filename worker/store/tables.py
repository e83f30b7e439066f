"""SQLAlchemy tables. The unique key on (session_id, step) is what makes "no step executed twice"
checkable; the indexes serve the auditors' questions.

On PostgreSQL both tables are partitioned by time (migration 0008, worker/store/partitions.py):
sessions by received_at, steps by their session's received_at, so keys include those columns
and request_id is kept unique by the store (an advisory lock per request_id), not by an index.
SQLite keeps the unpartitioned shape (request_id and (session_id, step) unique)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from ..status import Status

metadata = MetaData()
Json = JSON().with_variant(JSONB(), "postgresql")
Id = BigInteger().with_variant(Integer(), "sqlite")

PENDING, RUNNING, OK, DEGRADED, FAILED = Status  # the typed values, unchanged in the database
FINISHED = (OK, DEGRADED, FAILED)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("request_id", String(256), nullable=False, index=True),
    Column("user_id", String(256), nullable=False),
    Column("goal", Text, nullable=False),
    Column("request", Json),  # rows stored before request_text; newer ones keep only the text
    Column("status", String(16), nullable=False, default=PENDING),
    Column("model", String(256)),
    Column("prompt_version", String(64)),
    Column("policy", String(64)),
    Column("path", Json),
    Column("final_ranking", Json),
    Column("result", Json),
    Column("reason", Text),
    Column("llm_calls", Integer),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("latency_ms", Integer),
    Column("received_at", DateTime(timezone=True), primary_key=True),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("published_at", DateTime(timezone=True)),
    Column("lease_owner", String(128)),
    Column("lease_until", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("source_topic", String(256)),
    Column("source_partition", Integer),
    Column("source_offset", BigInteger),
    Column("replay_of", String(256)),
    Column("replay_mode", String(16)),
    Column("run_config", Json),
    Column("receipt_at", DateTime(timezone=True)),
    Column("deployment", String(256)),
    Column("result_topic", String(256)),
    Column("crashes", Integer, nullable=False, default=0, server_default="0"),
    Column("last_error", Text),
    Column("claimed_at", DateTime(timezone=True)),
    Column("request_hash", String(64)),
    Column("request_text", Text),
    Column("notes", Json),
    Index("ix_sessions_user_time_id", "user_id", "received_at", "id"),
    Index("ix_sessions_time_id", "received_at", "id"),
    Index("ix_sessions_status_time_id", "status", "received_at", "id"),
    Index("ix_sessions_model_prompt_time", "model", "prompt_version", "received_at", "id"),
    Index("ix_sessions_model_time", "model", "received_at", "id"),
    Index("ix_sessions_prompt_time", "prompt_version", "received_at", "id"),
    Index(
        "ix_sessions_replays_time",
        "received_at",
        "id",
        postgresql_where=text("replay_of IS NOT NULL"),
        sqlite_where=text("replay_of IS NOT NULL"),
    ),
    Index(
        "ix_sessions_final_ranking",
        "final_ranking",
        postgresql_using="gin",
        postgresql_ops={"final_ranking": "jsonb_path_ops"},
    ),
    Index("ix_sessions_goal_trgm", "goal", postgresql_using="gin", postgresql_ops={"goal": "gin_trgm_ops"}),
    Index("ix_sessions_replay_of", "replay_of"),
    Index("ix_sessions_unpublished", "completed_at", "published_at"),
    Index("ix_sessions_deployment_status", "deployment", "status"),
)

steps = Table(
    "steps",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("session_id", Id, nullable=False),
    Column("step", Integer, nullable=False),
    Column("node", String(32), nullable=False),
    Column("policy", String(32), nullable=False),
    Column("ranking", Json),
    Column("removed", Json),
    Column("next_node", String(32)),
    Column("offered", Json),
    Column("pool_size", Integer),
    Column("calls", Json),
    Column("notes", Json),
    Column("problem", Text),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("latency_ms", Float),
    Column("retries", Integer),
    Column("repair", Json),
    Column("withdrawn", Json),
    Column("cached_tokens", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("session_received_at", DateTime(timezone=True)),  # the partition key (PostgreSQL)
    UniqueConstraint("session_id", "session_received_at", "step", name="uq_steps_session_step"),
    ForeignKeyConstraint(
        ["session_id", "session_received_at"], ["sessions.id", "sessions.received_at"], ondelete="CASCADE"
    ),
    Index("ix_steps_node_time_session", "node", "session_received_at", "session_id"),
)

# Parts of prompts stored once and referenced from steps.calls by their SHA-256 (see parts.py).
# last_used: the latest day (UTC) a step referring to the part was written; retention deletes parts
# unused since before the oldest session it keeps (migration 0008).
prompt_parts = Table(
    "prompt_parts",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("body", Json, nullable=False),
    Column("last_used", Date, nullable=False, server_default=text("CURRENT_DATE")),
    Index("ix_prompt_parts_last_used", "last_used"),
)
