"""The leader's background upkeep of the registry: the health sweep and saving what is
pending."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ipc_router.application.ports import NoRouterMetrics, RouterMetrics
from ipc_router.application.registry import InstanceRegistry

_log = logging.getLogger("ipc_router.control")


class RegistryUpkeep:
    """Sweeps for silent instances every tenth of the heartbeat timeout, and retries
    pending saves every quarter of it (backing off to 5 s while the store is down).

    Args:
        registry: the registry to keep.
        listening: whether the router hears heartbeats now (its connection is up).
        in_term: whether this router's leadership term still runs: after it ended, nothing
            is expired or saved (another router may lead by now).
        metrics: counts the instances each sweep finds silent.
    """

    def __init__(
        self,
        registry: InstanceRegistry,
        listening: Callable[[], bool],
        in_term: Callable[[], bool] = lambda: True,
        *,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics or NoRouterMetrics()
        self._listening = listening
        self._in_term = in_term
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the sweep and the flush."""
        self._tasks = [
            asyncio.create_task(self._sweep(), name="ipc-router-health-sweep"),
            asyncio.create_task(self._flush(), name="ipc-router-flush"),
        ]

    async def stop(self) -> None:
        """Cancel both and wait for them. Idempotent."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _sweep(self) -> None:
        """Expire silent instances, unless this router was not listening itself: while its
        connection is down, and after it (or a stall of its own process) ends, instances
        get a grace period instead, since silence it could not hear proves nothing."""
        timeout = self._registry.table.heartbeat_timeout
        interval = timeout / 10
        loop = asyncio.get_running_loop()
        last = loop.time()
        deaf = False
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            stalled, last = now - last > timeout / 2, now
            try:
                if not self._in_term():
                    continue
                if not self._listening():
                    deaf = True
                    continue
                if deaf or stalled:
                    deaf = False
                    self._registry.grace_all()
                    continue
                self._metrics.heartbeats_missed(len(await self._registry.expire()))
            except Exception:  # keep sweeping whatever one pass hit
                _log.exception("health sweep failed")

    async def _flush(self) -> None:
        """Save pending changes; back off to 5 s between tries while the store is down."""
        interval = self._registry.table.heartbeat_timeout / 4
        delay = interval
        while True:
            await asyncio.sleep(delay)
            if not self._in_term():
                continue
            try:
                saved = await self._registry.flush()
            except Exception:
                _log.exception("saving the routing table failed")
                saved = False
            delay = interval if saved else min(delay * 2, 5.0)
