"""Reading a JetStream KV bucket whole, then following it: the one place that knows when a
watch has caught up, and that cleans up after it.

nats-py's watcher marks "caught up" with a ``None`` decided from a consumer info that races
the deliveries, so the marker can come before entries the server has already sent: a
reader that trusted it could take a full bucket for an empty one. Here the end of the
snapshot is the entry delivered with nothing pending after it (or the start, for an empty
bucket).

Every watch is a JetStream consumer, and the server holds a bounded number of them. nats-py
creates each with a five-minute inactive threshold and its ``stop()`` only unsubscribes, so
a one-off read (a status count, a scan) would leave a consumer behind for five minutes:
about a thousand reads in that time exhaust the server. Here each watch's consumer is
deleted when the watch ends, and is created with an inactive threshold of
``WATCH_INACTIVE_THRESHOLD`` seconds, so that one abandoned (its process died, the delete
was lost) goes away within seconds too. A consumer with a subscriber listening never
counts as inactive: a long watch (the routing cache) lives as long as it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import nats.errors
from nats.js.kv import KeyValue

from ipc_client_sdk._codec import Codec
from ipc_client_sdk._errors import CodecError

WATCH_INACTIVE_THRESHOLD = 5.0
"""Seconds the server keeps a watch's consumer once nothing listens to it."""

_DELETE_TIMEOUT = 2.0
"""Seconds a watch's end waits for the server to delete its consumer (the inactive
threshold removes it anyway)."""


async def watch_bucket(kv: KeyValue) -> AsyncGenerator[KeyValue.Entry | None]:
    """Yield every entry of the bucket (deletions included), then every change; yield
    ``None`` once, right after the entries the bucket held when the watch began.

    Close the generator when done (``contextlib.aclosing``): that deletes the watch's
    consumer at once rather than when the generator is collected.

    Raises:
        nats.errors.Error: JetStream did not answer.
    """
    caught_up = (await kv.status()).values == 0
    if caught_up:
        yield None
    watcher = await kv.watchall(inactive_threshold=WATCH_INACTIVE_THRESHOLD)
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
        await _end(watcher)


async def _end(watcher: KeyValue.KeyWatcher) -> None:
    """Unsubscribe the watch and delete its consumer; never raises."""
    with contextlib.suppress(nats.errors.Error):
        await watcher.stop()  # type: ignore[no-untyped-call]  # untyped in nats-py
    # nats-py keeps the subscription private, and with it the consumer's current name (an
    # ordered consumer is re-created under a new name after a gap in deliveries).
    sub = getattr(watcher, "_sub", None)
    js = getattr(sub, "_js", None)
    stream = getattr(sub, "_stream", None)
    consumer = getattr(sub, "_consumer", None)
    if js is None or not isinstance(stream, str) or not isinstance(consumer, str):
        return  # left to the inactive threshold
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        async with asyncio.timeout(_DELETE_TIMEOUT):
            await js.delete_consumer(stream, consumer)


def is_deletion(entry: KeyValue.Entry) -> bool:
    """Whether a watched entry removes its key."""
    return entry.operation in ("DEL", "PURGE")


Apply = Callable[[str, Any], None]
"""Takes one entry of a followed bucket: its key and decoded value (None: deleted)."""


async def follow_buckets(
    codec: Codec,
    watched: Sequence[tuple[KeyValue, Apply]],
    *,
    caught_up: Callable[[], None],
    unreadable: Callable[[str, Exception], None],
) -> None:
    """Watch every bucket of ``watched`` at once, passing each entry, decoded, to its
    bucket's function; call ``caught_up`` once every watch has read what its bucket held
    when it began. An entry that does not decode, or that its function refuses
    (``KeyError``, ``TypeError``, ``ValueError``), goes to ``unreadable`` instead.

    Returns when the first watch ends, raising what ended it; the others are stopped
    then, and every watch's consumer deleted.

    Raises:
        nats.errors.Error: JetStream did not answer.
    """
    behind = len(watched)

    def one_caught_up() -> None:
        nonlocal behind
        behind -= 1
        if behind == 0:
            caught_up()

    async def watch(kv: KeyValue, apply: Apply) -> None:
        async with contextlib.aclosing(watch_bucket(kv)) as entries:
            async for entry in entries:
                if entry is None:
                    one_caught_up()
                    continue
                try:
                    value = None if is_deletion(entry) else codec.decode(entry.value or b"")
                    apply(entry.key, value)
                except (CodecError, KeyError, TypeError, ValueError) as e:
                    unreadable(entry.key, e)

    watches = [asyncio.create_task(watch(kv, apply)) for kv, apply in watched]
    try:
        done, _ = await asyncio.wait(watches, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in watches:  # one failed (or we are cancelled): stop the others
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
    for task in done:
        task.result()  # raise what ended it
