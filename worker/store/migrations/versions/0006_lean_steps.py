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


# the fields a lean call leaves out when at their default (worker.store.parts.CALL_DEFAULTS)
CALL_DEFAULTS = (
    '{"response_format": null, "raw": null, "raw_replaced": null, "prompt_tokens": 0, '
    '"completion_tokens": 0, "latency_ms": 0.0, "retries": 0, "error": null, '
    '"attempts": [], "deadline_passed": false, "finish_reason": null, "model": null, '
    '"cached_tokens": null, "window": null, "max_tokens": null, "counted_tokens": null}'
)
ATTEMPT_DEFAULTS = '{"status": null, "error": null, "latency_ms": 0.0}'
PART = (
    "CASE WHEN jsonb_typeof({v}) = 'string' AND left({v} #>> '{{}}', 7) = 'sha256:' "
    "THEN (SELECT p.body FROM prompt_parts p WHERE p.hash = substr({v} #>> '{{}}', 8)) "
    "ELSE {v} END"
)


def downgrade() -> None:
    """Writes every lean call back in full (parts joined in, defaults filled), then drops the table."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            UPDATE steps SET calls = (
              SELECT jsonb_agg(full_call ORDER BY n) FROM (
                SELECT n, '{CALL_DEFAULTS}'::jsonb || lean || jsonb_build_object(
                  'messages', (SELECT coalesce(jsonb_agg({PART.format(v="m")} ORDER BY i), '[]')
                               FROM jsonb_array_elements(lean->'messages') WITH ORDINALITY e(m, i)),
                  'response_format', {PART.format(v="coalesce(lean->'response_format', 'null')")},
                  'attempts', (SELECT coalesce(jsonb_agg('{ATTEMPT_DEFAULTS}'::jsonb || a ORDER BY j),
                                               '[]')
                               FROM jsonb_array_elements(coalesce(lean->'attempts', '[]'))
                                    WITH ORDINALITY t(a, j))) AS full_call
                FROM jsonb_array_elements(calls) WITH ORDINALITY c(lean, n)) AS expanded)
            WHERE jsonb_typeof(calls) = 'array' AND jsonb_array_length(calls) > 0
              AND calls::text LIKE '%"sha256:%'
        """)
    op.drop_table("prompt_parts")
