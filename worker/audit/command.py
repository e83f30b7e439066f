"""`llm4rerank trace|replay|audit-api|export` (being built)."""

import typer

trace_app = typer.Typer(no_args_is_help=True, help="Query stored navigation traces.")


def _not_built() -> None:
    typer.echo("error: not built yet", err=True)
    raise typer.Exit(2)


def replay_command() -> None:
    """Replay stored sessions (not built yet)."""
    _not_built()


def audit_api_command() -> None:
    """Read-only HTTP API and trace viewer (not built yet)."""
    _not_built()


def export_command() -> None:
    """Export sessions to JSONL or Parquet (not built yet)."""
    _not_built()
