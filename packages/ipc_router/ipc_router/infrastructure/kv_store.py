"""Small helpers shared by the KV-backed repositories: bounded reads and writes.

Every NATS or JetStream failure, and every read that takes too long, leaves here as a
``StoreUnavailableError`` naming the bucket, so use cases see one error type.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import nats.errors
from nats.js.kv import KeyValue

from ipc_client_sdk.protocol import is_deletion, watch_bucket
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
    """Every live key and value in the bucket, read in one pass of a watcher (see
    ``watch_bucket`` for how the end of the pass is found, and why the watch's consumer is
    gone when this returns)."""
    found: dict[str, bytes] = {}
    async with aclosing(watch_bucket(kv)) as entries:
        async for entry in entries:
            if entry is None:
                break  # the snapshot is complete
            if is_deletion(entry) or not entry.value:
                found.pop(entry.key, None)
            else:
                found[entry.key] = entry.value
    return list(found.items())
