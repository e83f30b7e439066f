"""A compact trace store: the request stored once per session (its text; sessions.request only for
rows stored before request_text), step lists front-coded and repair counts without zeros
(worker.store.compact), a step's own calls deflated (worker.store.calls_codec; written by the
code, nothing to change in the schema), lz4 column compression (worker.store.storage). Rows stored
before keep their form and read as they are; downgrade writes every compact value back in the
form 0007 reads (request JSONB filled, lists and counts in full, calls inflated).

Revision ID: 0009_compact_store
Revises: 0008_partitions
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from worker.store.calls_codec import inflate_calls
from worker.store.partitions import partition_names
from worker.store.storage import apply_storage, reset_statements

revision = "0009_compact_store"
down_revision = "0008_partitions"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
# the repair counts a compact row leaves out when zero (worker.schemas.RepairSummary)
REPAIR_ZEROS = '{"answers": 0, "permutations": 0, "appended": 0, "duplicates": 0, "unknown": 0, "ties": 0}'


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column("request", existing_type=Json, nullable=True)
    bind = op.get_bind()
    for table in ("sessions", "steps"):
        apply_storage(bind, table)  # partitions made from now on inherit it
        for partition in partition_names(bind, table):  # a parent's ALTER skips its partitions
            apply_storage(bind, partition, base=table)


def _inflate_all(bind: sa.Connection) -> None:
    """Deflated calls written back as their lean list (what 0006_lean_steps reads), by batch."""
    steps = sa.table("steps", sa.column("id", sa.BigInteger), sa.column("calls", Json))
    kind = sa.func.jsonb_typeof if bind.dialect.name == "postgresql" else sa.func.json_type
    last = 0
    while True:
        rows = bind.execute(
            sa.select(steps.c.id, steps.c.calls)
            .where(kind(steps.c.calls) == "object", steps.c.id > last)
            .order_by(steps.c.id)
            .limit(1000)
        ).all()
        if not rows:
            return
        for row in rows:
            bind.execute(steps.update().where(steps.c.id == row.id).values(calls=inflate_calls(row.calls)))
        last = rows[-1].id


def downgrade() -> None:
    bind = op.get_bind()
    _inflate_all(bind)
    if bind.dialect.name == "postgresql":
        for table in ("sessions", "steps"):
            for name in [table, *partition_names(bind, table)]:
                for statement in reset_statements(name, base=table):
                    op.execute(statement)
        op.execute(
            "UPDATE sessions SET request = request_text::jsonb "
            "WHERE request IS NULL OR jsonb_typeof(request) = 'null'"
        )
        for column in ("ranking", "removed"):
            op.execute(f"""
                UPDATE steps SET {column} = (
                  SELECT jsonb_agg(to_jsonb(({column}->>'prefix') || (e #>> '{{}}')) ORDER BY i)
                  FROM jsonb_array_elements({column}->'ids') WITH ORDINALITY x(e, i))
                WHERE jsonb_typeof({column}) = 'object'
            """)
        op.execute(
            f"UPDATE steps SET repair = '{REPAIR_ZEROS}'::jsonb || repair "
            "WHERE jsonb_typeof(repair) = 'object'"
        )
    else:
        op.execute("UPDATE sessions SET request = request_text WHERE request IS NULL OR request = 'null'")
        for column in ("ranking", "removed"):
            op.execute(f"""
                UPDATE steps SET {column} = (
                  SELECT json_group_array(json_extract({column}, '$.prefix') || e.value)
                  FROM (SELECT value FROM json_each(json_extract({column}, '$.ids')) ORDER BY key) e)
                WHERE json_type({column}) = 'object'
            """)
        op.execute(
            f"UPDATE steps SET repair = json_patch('{REPAIR_ZEROS}', repair) "
            "WHERE json_type(repair) = 'object'"
        )
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column("request", existing_type=Json, nullable=False)
