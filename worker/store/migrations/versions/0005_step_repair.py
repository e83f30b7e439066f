"""steps.repair, steps.withdrawn, steps.cached_tokens: what repair did to a step's answers, the
lists Backward withdrew as the step's prompt showed them, and prompt tokens from the server's cache

Revision ID: 0005
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("repair", sa.JSON().with_variant(JSONB(), "postgresql")))
        batch.add_column(sa.Column("withdrawn", sa.JSON().with_variant(JSONB(), "postgresql")))
        batch.add_column(sa.Column("cached_tokens", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("cached_tokens")
        batch.drop_column("withdrawn")
        batch.drop_column("repair")
