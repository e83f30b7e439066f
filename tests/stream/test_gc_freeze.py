"""The worker freezes what start-up left alive, so full collections scan only what requests made."""

from __future__ import annotations

import gc

from worker.stream.app import freeze_startup_objects


def test_start_up_objects_leave_the_collectors_reach() -> None:
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 10_000  # the imported modules and their types
        gc.collect()
        assert gc.get_freeze_count() == frozen  # a full collection leaves them where they are
    finally:
        gc.unfreeze()
