"""One shared view of the LLM endpoint's health, so an outage is not hammered by every walk.

After `threshold` retryable failures in a row (5xx, 429, timeouts, refused connections) the
breaker opens: callers wait instead of sending, and one of them at a time is let through as a
probe, at a growing interval. The first answer closes it again. A caller whose deadline comes
while it waits gets EndpointDown, which the transport turns into the deadline of its call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class EndpointDown(Exception):
    """The deadline came while the breaker was open."""


class Breaker:
    def __init__(
        self,
        threshold: int,
        first_probe_s: float = 0.25,
        max_probe_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.first_probe_s, self.max_probe_s = first_probe_s, max_probe_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.interval = first_probe_s
        self.next_probe = 0.0
        self._probing = False
        self._closed = asyncio.Event()
        self._closed.set()
        self.on_change: Callable[[bool], None] | None = None  # told True on open, False on close

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    @asynccontextmanager
    async def admit(self, deadline: float) -> AsyncIterator[None]:
        """Wait until a request may be sent (closed, or this caller's turn to probe)."""
        probe = False
        while self.open:
            now = self.clock()
            if deadline - now <= 0:
                raise EndpointDown(self.describe())
            if not self._probing and now >= self.next_probe:
                self._probing = probe = True
                break
            # wake for the next probe slot (or to check again while another caller probes)
            wait = min(deadline - now, 0.1 if self._probing else max(self.next_probe - now, 0.01))
            try:
                async with asyncio.timeout(wait):
                    await self._closed.wait()
            except TimeoutError:
                pass
        try:
            yield
        finally:
            if probe:
                self._probing = False

    def describe(self) -> str:
        now = self.clock()
        return f"endpoint down for {now - (self.opened_at or now):.1f}s; {self.failures} failures in a row"

    def failed(self) -> None:
        self.failures += 1
        now = self.clock()
        if self.open:
            self.interval = min(self.interval * 2, self.max_probe_s)
            self.next_probe = now + self.interval
        elif self.threshold and self.failures >= self.threshold:
            self.opened_at, self.interval = now, self.first_probe_s
            self.next_probe = now + self.interval
            self._closed.clear()
            if self.on_change is not None:
                self.on_change(True)

    def answered(self) -> None:
        self.failures = 0
        if self.open:
            self.opened_at = None
            self._closed.set()
            if self.on_change is not None:
                self.on_change(False)
