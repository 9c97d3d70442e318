"""Waiting at start-up for what the router sets up: services and the router start in any
order (a container deployment starts them together), so ``serve()`` and
``subscribe(durable=...)`` wait for the router's buckets and streams, and for a router to
answer, instead of failing at once.

The wait retries with jittered, capped backoff, within a bound the caller gives
(``ready_timeout``); it logs what it waits for once, then at most every ``_LOG_EVERY``
seconds. When the bound runs out the last error is raised, for the caller to turn into its
usual clear message.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from ipc_client_sdk._errors import InvalidArgumentError

_log = logging.getLogger("ipc_client_sdk.readiness")

DEFAULT_READY_TIMEOUT = 30.0
"""Seconds ``serve()`` and ``subscribe(durable=...)`` wait for the router by default."""

MAX_READY_TIMEOUT = 3600.0

_FIRST_DELAY = 0.1
_MAX_DELAY = 2.0
_LOG_EVERY = 5.0


def check_ready_timeout(value: object) -> float:
    """A valid ``ready_timeout`` (seconds, 0 for no wait) as a float.

    Raises:
        InvalidArgumentError: not a number between 0 and ``MAX_READY_TIMEOUT``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_READY_TIMEOUT
    ):
        raise InvalidArgumentError(
            f"ready_timeout must be seconds between 0 and {MAX_READY_TIMEOUT:g}, got {value!r}"
        )
    return float(value)


class ReadyWait:
    """One start-up's wait: a deadline shared by every step that waits for the router.

    Args:
        bound: seconds from now the steps may wait in all.
        who: who waits, for the log (``service_b.b1``, ``durable 'audit'``).
    """

    def __init__(self, bound: float, who: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + bound
        self._who = who

    async def retry[T](
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        waiting_for: str,
        missing: Callable[[Exception], bool],
    ) -> T:
        """Run ``attempt`` until it succeeds or fails with an error ``missing`` does not
        accept, or the deadline passes (then its last error is raised)."""
        delay = _FIRST_DELAY
        logged_at: float | None = None
        while True:
            try:
                return await attempt()
            except Exception as e:
                now = self._loop.time()
                left = self._deadline - now
                if not missing(e) or left <= 0:
                    raise
                if logged_at is None or now - logged_at >= _LOG_EVERY:
                    _log.warning(
                        "%s is waiting for %s (%.0fs left): is ipc-router running on this NATS?",
                        self._who,
                        waiting_for,
                        left,
                    )
                    logged_at = now
                await asyncio.sleep(min(left, random.uniform(delay / 2, delay)))
                delay = min(delay * 2, _MAX_DELAY)
