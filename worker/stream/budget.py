"""A budget of request bytes in flight per process: what bounds memory under a backlog of large
requests (a count of walks alone lets 64 one-megabyte requests in at once)."""

from __future__ import annotations

import asyncio


class ByteBudget:
    """`acquire(n)` waits until n bytes fit; one request larger than the whole budget still runs
    (alone), so nothing waits forever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Condition()

    async def acquire(self, n: int) -> int:
        n = min(max(n, 0), self.limit)
        async with self._freed:
            await self._freed.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        return n

    async def release(self, n: int) -> None:
        async with self._freed:
            self.used = max(self.used - n, 0)
            self._freed.notify_all()
