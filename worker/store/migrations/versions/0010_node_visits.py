"""The node filter's index leads with the node, then the steps' partition key and session id:
the audit query reads it in (received_at, id) order beside the sessions' keyset index, so a page
of sessions that visited a node (rare or common) is a merge semi-join that stops when full

Revision ID: 0010_node_visits
Revises: 0009_compact_store
"""

from alembic import op

revision = "0010_node_visits"
down_revision = "0009_compact_store"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_steps_node_time_session", "steps", ["node", "session_received_at", "session_id"])
    op.drop_index("ix_steps_node_session", table_name="steps")


def downgrade() -> None:
    op.create_index("ix_steps_node_session", "steps", ["node", "session_id"])
    op.drop_index("ix_steps_node_time_session", table_name="steps")
