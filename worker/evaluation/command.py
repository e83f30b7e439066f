"""`llm4rerank eval` (being built)."""

import typer


def eval_command() -> None:
    """Offline evaluation with the paper's metrics (not built yet)."""
    typer.echo("error: eval is not built yet", err=True)
    raise typer.Exit(2)
