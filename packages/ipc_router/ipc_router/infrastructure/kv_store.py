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
    """Every live key and value in the bucket, read in one pass of a watcher.

    The end of the pass is the entry delivered with nothing pending after it, not nats-py's
    "caught up" marker: that marker can come before entries the server has already sent
    (it is decided from a consumer info that races the deliveries), and a router restoring
    its table from it would see an empty registry. The marker counts only while nothing
    has arrived and the bucket is empty.
    """
    found: dict[str, bytes] = {}
    if (await kv.status()).values == 0:
        return []
    watcher = await kv.watchall()
    received = 0
    try:
        async for entry in watcher:
            if entry is None:
                if received == 0 and (await kv.status()).values == 0:
                    break  # emptied meanwhile
                continue
            received += 1
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                found.pop(entry.key, None)
            else:
                found[entry.key] = entry.value
            if not entry.delta:
                break  # nothing pending after it: the snapshot is complete
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
    return list(found.items())
