"""Small helpers shared by the KV-backed repositories: bounded reads and writes.

Every NATS or JetStream failure, and every read that takes too long, leaves here as a
``StoreUnavailableError`` naming the bucket, so use cases see one error type.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats.errors
from nats.js.kv import KeyValue

from ipc_router.application.errors import StoreUnavailableError


@asynccontextmanager
async def guarded(name: str, timeout: float) -> AsyncIterator[None]:
    """Run a block of operations on store ``name``, bounded by ``timeout`` seconds.

    Raises:
        StoreUnavailableError: the block failed in NATS or did not finish in time.
    """
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError as e:
        raise StoreUnavailableError(name, f"no answer within {timeout:g}s") from e
    except nats.errors.Error as e:
        raise StoreUnavailableError(name, str(e) or type(e).__name__) from e


async def scan(kv: KeyValue) -> list[tuple[str, bytes]]:
    """Every live key and value in the bucket, read in one pass of a watcher."""
    watcher = await kv.watchall(ignore_deletes=True)
    entries: list[tuple[str, bytes]] = []
    try:
        async for entry in watcher:
            if entry is None:
                break  # end of the current snapshot
            if entry.value:
                entries.append((entry.key, entry.value))
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
    return entries
