"""The trace store: sessions and their node steps in PostgreSQL (or SQLite for offline runs)."""
