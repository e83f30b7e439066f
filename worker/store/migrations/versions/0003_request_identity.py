"""sessions.request_hash, request_text and notes: idempotency by content, the request's own JSON
text (prompts keep its key order), and notes made at receipt (e.g. an unknown replay-of)

Revision ID: 0003
Revises: 0005 (chained after the step-repair migration merged first)
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("request_hash", sa.String(64)))
        batch.add_column(sa.Column("request_text", sa.Text()))
        batch.add_column(sa.Column("notes", sa.JSON().with_variant(JSONB(), "postgresql")))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("notes")
        batch.drop_column("request_text")
        batch.drop_column("request_hash")
