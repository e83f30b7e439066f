"""sessions: receipt time, owning deployment, result topic, crash count

receipt_at is when the request's clock started (its Kafka timestamp, or receipt); deployment and
result_topic say which consumer group resumes and publishes a session, and where; crashes counts
walks that raised (outages do not count), last_error keeps the latest reason; claimed_at is when
a worker last took the session up (how fast a dead worker's sessions moved).

Revision ID: 0004
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("receipt_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("deployment", sa.String(256)))
        batch.add_column(sa.Column("result_topic", sa.String(256)))
        batch.add_column(sa.Column("crashes", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_error", sa.Text))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True)))
    op.create_index("ix_sessions_deployment_status", "sessions", ["deployment", "status"])


def downgrade() -> None:
    op.drop_index("ix_sessions_deployment_status", "sessions")
    with op.batch_alter_table("sessions") as batch:
        for name in ("claimed_at", "last_error", "crashes", "result_topic", "deployment", "receipt_at"):
            batch.drop_column(name)
