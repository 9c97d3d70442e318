"""Reading a JetStream KV bucket whole, then following it: the one place that knows when a
watch has caught up.

nats-py's watcher marks "caught up" with a ``None`` decided from a consumer info that races
the deliveries, so the marker can come before entries the server has already sent: a
reader that trusted it could take a full bucket for an empty one. Here the end of the
snapshot is the entry delivered with nothing pending after it (or the start, for an empty
bucket).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import nats.errors
from nats.js.kv import KeyValue


async def watch_bucket(kv: KeyValue) -> AsyncIterator[KeyValue.Entry | None]:
    """Yield every entry of the bucket (deletions included), then every change; yield
    ``None`` once, right after the entries the bucket held when the watch began.

    Raises:
        nats.errors.Error: JetStream did not answer.
    """
    caught_up = (await kv.status()).values == 0
    if caught_up:
        yield None
    watcher = await kv.watchall()
    received = 0
    try:
        async for entry in watcher:
            if entry is None:
                # nats-py's own marker: believed only for a bucket emptied meanwhile.
                if not caught_up and received == 0 and (await kv.status()).values == 0:
                    caught_up = True
                    yield None
                continue
            received += 1
            yield entry
            if not caught_up and not entry.delta:
                caught_up = True
                yield None
    finally:
        with contextlib.suppress(nats.errors.Error):
            await watcher.stop()  # type: ignore[no-untyped-call]  # untyped in nats-py


def is_deletion(entry: KeyValue.Entry) -> bool:
    """Whether a watched entry removes its key."""
    return entry.operation in ("DEL", "PURGE")
