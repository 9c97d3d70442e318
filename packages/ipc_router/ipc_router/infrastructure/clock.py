"""``SystemClock``: wall-clock time (satisfies ``Clock``)."""

from __future__ import annotations

import time


class SystemClock:
    """Unix time from the operating system."""

    def now(self) -> float:
        """The current Unix time."""
        return time.time()
