"""`python -m worker.cli`: the same command line as the `llm4rerank` script."""

from . import app

app()
