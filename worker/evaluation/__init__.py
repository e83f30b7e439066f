"""Offline evaluation with the paper's protocol and metrics."""
