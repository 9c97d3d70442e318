"""Reading a call's claim in the results bucket (for calls JetStream delivers again)."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

_TIMEOUT = 2.0
"""Seconds one read may take."""


class ResultClaims:
    """Reads keys of the results bucket.

    Args:
        kv: the results bucket.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def read(self, key: str) -> bytes | None:
        """The key's value (a claim or a recorded outcome); None when it holds none, or
        the bucket did not answer (the call is then routed as if nothing was claimed: the
        next instance finds the claim and waits for it). Never raises."""
        try:
            async with asyncio.timeout(_TIMEOUT):
                entry = await self._kv.get(key)
        except (TimeoutError, nats.js.errors.KeyNotFoundError, nats.errors.Error):
            return None
        return entry.value
