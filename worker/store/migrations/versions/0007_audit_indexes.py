"""Indexes for the audit queries on a large store: keyset paging over (received_at, id), the
prompt-version filter, replays only, items in the final ranking (GIN), goal substrings (trigram
GIN, where pg_trgm can be created) and the node filter through steps

Revision ID: 0007_audit_indexes
Revises: 0006_lean_steps
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_audit_indexes"
down_revision = "0006_lean_steps"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_index("ix_sessions_time_id", "sessions", ["received_at", "id"])
    op.drop_index("ix_sessions_time", table_name="sessions")
    op.create_index("ix_sessions_user_time_id", "sessions", ["user_id", "received_at", "id"])
    op.drop_index("ix_sessions_user_time", table_name="sessions")
    op.create_index("ix_sessions_status_time_id", "sessions", ["status", "received_at", "id"])
    op.drop_index("ix_sessions_status_time", table_name="sessions")
    op.create_index("ix_sessions_model_time", "sessions", ["model", "received_at", "id"])
    op.create_index(
        "ix_sessions_model_prompt_time", "sessions", ["model", "prompt_version", "received_at", "id"]
    )
    op.drop_index("ix_sessions_model_prompt", table_name="sessions")
    op.create_index("ix_sessions_prompt_time", "sessions", ["prompt_version", "received_at", "id"])
    replays = sa.text("replay_of IS NOT NULL")
    op.create_index(
        "ix_sessions_replays_time",
        "sessions",
        ["received_at", "id"],
        postgresql_where=replays,
        sqlite_where=replays,
    )
    if postgres:
        op.create_index(
            "ix_sessions_final_ranking",
            "sessions",
            ["final_ranking"],
            postgresql_using="gin",
            postgresql_ops={"final_ranking": "jsonb_path_ops"},
        )
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.create_index(
            "ix_sessions_goal_trgm",
            "sessions",
            ["goal"],
            postgresql_using="gin",
            postgresql_ops={"goal": "gin_trgm_ops"},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_sessions_goal_trgm", table_name="sessions")
        op.drop_index("ix_sessions_final_ranking", table_name="sessions")
    op.drop_index("ix_sessions_replays_time", table_name="sessions")
    op.drop_index("ix_sessions_prompt_time", table_name="sessions")
    op.create_index("ix_sessions_model_prompt", "sessions", ["model", "prompt_version"])
    op.drop_index("ix_sessions_model_prompt_time", table_name="sessions")
    op.drop_index("ix_sessions_model_time", table_name="sessions")
    op.create_index("ix_sessions_status_time", "sessions", ["status", "received_at"])
    op.drop_index("ix_sessions_status_time_id", table_name="sessions")
    op.create_index("ix_sessions_user_time", "sessions", ["user_id", "received_at"])
    op.drop_index("ix_sessions_user_time_id", table_name="sessions")
    op.create_index("ix_sessions_time", "sessions", ["received_at"])
    op.drop_index("ix_sessions_time_id", table_name="sessions")
