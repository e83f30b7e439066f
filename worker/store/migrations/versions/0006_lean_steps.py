"""prompt_parts: the parts of prompts every step of a session shares (the system message) and
response formats, stored once by SHA-256 and referenced from steps.calls; steps stored before
keep their full messages and are read as they are

Revision ID: 0006_lean_steps
Revises: 0003 (the request-identity migration, head when this was written)
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006_lean_steps"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompt_parts",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("body", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    )


def downgrade() -> None:
    """Puts every part back into the steps that refer to it, then drops the table."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("""
            UPDATE steps SET calls = (
              SELECT jsonb_agg(
                       CASE WHEN call ? 'messages' THEN
                         jsonb_set(call, '{messages}', (
                           SELECT jsonb_agg(COALESCE(
                                    (SELECT p.body FROM prompt_parts p WHERE p.hash = m->>'sha256'),
                                    m) ORDER BY i)
                           FROM jsonb_array_elements(call->'messages') WITH ORDINALITY AS e(m, i)))
                       ELSE call END
                       || CASE WHEN jsonb_typeof(call->'response_format') = 'object'
                                AND call->'response_format' ? 'sha256' THEN
                            jsonb_build_object('response_format', (
                              SELECT p.body FROM prompt_parts p
                              WHERE p.hash = call->'response_format'->>'sha256'))
                          ELSE '{}'::jsonb END
                       ORDER BY n)
              FROM jsonb_array_elements(calls) WITH ORDINALITY AS c(call, n))
            WHERE jsonb_typeof(calls) = 'array' AND jsonb_array_length(calls) > 0
              AND calls::text LIKE '%"sha256"%'
        """)
    op.drop_table("prompt_parts")
