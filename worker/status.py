"""Session and result status: one typed list of the values the store, the results, the walk and
the metrics use. They are `str`s (StrEnum), so the database and the wire keep the same words."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Status(StrEnum):
    """A session is pending until claimed, running while walked, then ok, degraded or failed."""

    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"


FINISHED = (Status.OK, Status.DEGRADED, Status.FAILED)
UNFINISHED = (Status.PENDING, Status.RUNNING)
ResultStatus = Literal[Status.OK, Status.DEGRADED, Status.FAILED]
"""A finished walk's or result's status (a session in the store may also be pending or running)."""
