"""The `llm4rerank` command line: one module per group of verbs, the shared options and helpers
in `common`. Exit codes: 0 success, 1 some inputs failed, 2 usage or configuration error (one
line naming the fix)."""

from __future__ import annotations

import typer

from . import audit, db, evaluation, replay, retention, service
from .common import fail, run, settings_or_exit

__all__ = ["app", "fail", "run", "settings_or_exit"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="LLM4Rerank: goal-steered LLM reranking as a streaming service.",
)
app.command()(service.rerank)
app.command("sim-llm")(service.sim_llm)
app.command()(service.worker)
app.command()(service.submit)
db.db_app.command("partitions")(retention.partitions_command)
app.add_typer(db.db_app, name="db")
app.command("schemas")(service.export_schemas)
app.add_typer(audit.trace_app, name="trace")
app.command("replay")(replay.replay_command)
app.command("audit-api")(audit.audit_api_command)
app.command("export")(audit.export_command)
app.command("eval")(evaluation.eval_command)
app.command("retention")(retention.retention_command)
