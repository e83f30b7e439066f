"""The worker's event-loop lag histogram records a blocked loop."""

from __future__ import annotations

import asyncio
import time

from worker.stream.metrics import LOOP_LAG, watch_loop_lag


def _observed(over_s: float) -> tuple[float, float]:
    """(observations so far, those above `over_s`, a bucket bound), read back from the registry."""
    total = within = 0.0
    for sample in next(iter(LOOP_LAG.collect())).samples:
        if sample.name.endswith("_count"):
            total = sample.value
        elif sample.name.endswith("_bucket") and sample.labels["le"] == str(over_s):
            within = sample.value
    return total, total - within


async def test_a_blocked_loop_is_seen_as_lag() -> None:
    count_before, late_before = _observed(0.05)
    watcher = asyncio.create_task(watch_loop_lag(interval_s=0.01))
    await asyncio.sleep(0.05)  # a few on-time timers first
    time.sleep(0.2)  # blocking code: the timer due in 10 ms fires about 190 ms late
    await asyncio.sleep(0.05)
    watcher.cancel()
    count, late = _observed(0.05)
    assert count - count_before >= 3  # every timer is observed, the on-time ones too
    assert late - late_before >= 1
