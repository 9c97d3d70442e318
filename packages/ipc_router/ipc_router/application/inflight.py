"""``InflightTracker``: the calls this router has sent to each instance and not yet seen
answered. The call path counts them; a handover waits on them before the roles move."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter


class InflightTracker:
    """Calls in flight per (service, instance), and a wait for an instance to have none."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._idle = asyncio.Event()

    def add(self, service: str, instance_id: str) -> None:
        """A call was sent to the instance."""
        self._counts[(service, instance_id)] += 1

    def done(self, service: str, instance_id: str) -> None:
        """A call sent to the instance was answered (or given up on)."""
        key = (service, instance_id)
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]
            self._idle.set()
            self._idle = asyncio.Event()

    def count(self, service: str, instance_id: str) -> int:
        """Calls in flight to the instance."""
        return self._counts.get((service, instance_id), 0)

    async def quiesce(self, service: str, instance_id: str, timeout: float) -> bool:
        """Wait until no call is in flight to the instance; False if ``timeout`` ran out."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while self.count(service, instance_id):
            left = until - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), left)
        return True
