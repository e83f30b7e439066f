"""LLM4Rerank (arXiv 2406.12433) as an asynchronous streaming reranking service."""

__version__ = "0.1.0"
