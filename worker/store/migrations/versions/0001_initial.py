"""sessions and steps

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(256), nullable=False, unique=True),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("goal", sa.Text, nullable=False),
        sa.Column("request", Json, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("prompt_version", sa.String(64)),
        sa.Column("policy", sa.String(64)),
        sa.Column("path", Json),
        sa.Column("final_ranking", Json),
        sa.Column("result", Json),
        sa.Column("reason", sa.Text),
        sa.Column("llm_calls", sa.Integer),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("received_at", Time, nullable=False),
        sa.Column("started_at", Time),
        sa.Column("completed_at", Time),
        sa.Column("published_at", Time),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", Time),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("source_topic", sa.String(256)),
        sa.Column("source_partition", sa.Integer),
        sa.Column("source_offset", sa.BigInteger),
        sa.Column("replay_of", sa.String(256)),
        sa.Column("replay_mode", sa.String(16)),
    )
    op.create_index("ix_sessions_user_time", "sessions", ["user_id", "received_at"])
    op.create_index("ix_sessions_time", "sessions", ["received_at"])
    op.create_index("ix_sessions_status_time", "sessions", ["status", "received_at"])
    op.create_index("ix_sessions_model_prompt", "sessions", ["model", "prompt_version"])
    op.create_index("ix_sessions_replay_of", "sessions", ["replay_of"])
    op.create_index("ix_sessions_unpublished", "sessions", ["completed_at", "published_at"])
    op.create_table(
        "steps",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("session_id", Id, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("node", sa.String(32), nullable=False),
        sa.Column("policy", sa.String(32), nullable=False),
        sa.Column("ranking", Json),
        sa.Column("removed", Json),
        sa.Column("next_node", sa.String(32)),
        sa.Column("offered", Json),
        sa.Column("pool_size", sa.Integer),
        sa.Column("calls", Json),
        sa.Column("notes", Json),
        sa.Column("problem", sa.Text),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("latency_ms", sa.Float),
        sa.Column("retries", sa.Integer),
        sa.Column("created_at", Time, nullable=False),
        sa.UniqueConstraint("session_id", "step", name="uq_steps_session_step"),
    )
    op.create_index("ix_steps_node_session", "steps", ["node", "session_id"])


def downgrade() -> None:
    op.drop_table("steps")
    op.drop_table("sessions")
