"""Which store failures belong to the data and which mean the database is unreachable.

PostgreSQL reports a value it cannot take with SQLSTATE class 22 (data exception: invalid text,
U+0000, numeric out of range, value too long, ...), 23 (integrity) or 54 (program limit); the
driver refuses text it cannot encode before sending it. Those are a record's own outcome, never
backpressure. Everything connection-shaped (class 08, 53, 57, OS errors, timeouts) is.
"""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError

DATA_CLASSES = ("22", "23", "54")
# connection exception, insufficient resources, operator intervention (shutting down, starting up)
DOWN_CLASSES = ("08", "53", "57")


def sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    for source in (orig, getattr(orig, "__cause__", None), exc):
        code = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_data_error(exc: BaseException) -> bool:
    """True when the failure is caused by the values written, not by the connection."""
    if isinstance(exc, UnicodeError | OverflowError):
        return True
    code = sqlstate(exc)  # SQLAlchemy's wrapper, or asyncpg's own error
    if code is not None:
        return code[:2] in DATA_CLASSES
    if isinstance(exc, DBAPIError):
        orig = getattr(exc, "orig", None)
        return isinstance(getattr(orig, "__cause__", None), UnicodeError | OverflowError | ValueError)
    return False


def is_db_down(exc: BaseException) -> bool:
    """True for failures that mean: wait for the database and try again."""
    if is_data_error(exc):
        return False
    code = sqlstate(exc)
    if code is not None and code[:2] in DOWN_CLASSES:  # also asyncpg's own, unwrapped at connect
        return True
    return isinstance(
        exc,
        OSError
        | ConnectionError
        | OperationalError
        | DBAPIError
        | asyncio.TimeoutError
        | asyncpg.InterfaceError,
    )
