"""``SystemClock``: wall-clock and monotonic time (satisfies ``Clock``)."""

from __future__ import annotations

import time


class SystemClock:
    """Unix time from the operating system."""

    def now(self) -> float:
        """The current Unix time."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (NTP steps do not move it)."""
        return time.monotonic()
