"""Waiting for a distributed system to settle, without sleeping a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually[T](
    operation: Callable[[], Awaitable[T]],
    *,
    within: float = 15.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    interval: float = 0.1,
) -> T:
    """Run ``operation`` until it succeeds, for at most ``within`` seconds.

    For states that a cluster reaches on its own time (a stream leader elected, a node back).
    The last error is re-raised if time runs out.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            return await operation()
        except retry_on:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)


async def until(
    condition: Callable[[], bool], within: float = 10.0, *, interval: float = 0.02
) -> None:
    """Wait until ``condition()`` is true, for at most ``within`` seconds.

    For a state the test reads directly (a counter, a flag, an instance's calls in flight),
    instead of sleeping for the time it usually takes.

    Raises:
        AssertionError: still false after ``within`` seconds.
    """

    async def check() -> None:
        if not condition():
            raise AssertionError(f"condition not met within {within:g}s")

    await eventually(check, within=within, retry_on=(AssertionError,), interval=interval)
