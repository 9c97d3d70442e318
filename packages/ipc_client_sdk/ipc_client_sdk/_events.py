"""Router events: ``async for event in client.admin.events(kinds={"role"}): ...``.

The leading router publishes a ``RouterEvent`` on ``<prefix>.events.<kind>`` for every role,
health and registry change. They travel on core NATS and are not stored: an observer sees
the events published while it is subscribed and connected, and none from before or from an
outage.

The subscriptions belong to a small async generator that ``RouterEvents`` holds and that
refers to nothing of it. Closing the stream (``aclose()``, leaving ``async with``) ends the
generator, which unsubscribes; so does dropping the stream after breaking out of
``async for``, when asyncio finalizes the generator it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable
from types import TracebackType
from typing import Self

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ipc_client_sdk._contracts import EventKind, RouterEvent
from ipc_client_sdk._errors import InvalidArgumentError, IPCConnectionError, IPCError
from ipc_client_sdk._link import Link
from ipc_client_sdk._logs import RateLimitedLog, clip
from ipc_client_sdk._nats import connection_error, servers_label

_log = logging.getLogger("ipc_client_sdk.events")

DEFAULT_MAX_PENDING = 1024
"""Events a stream holds for a consumer that falls behind; later ones are dropped."""

DEFAULT_MAX_OUTAGE = 5.0
"""Seconds the connection may be down before a stream gives up."""

_POLL = 0.5
"""Seconds between looks at the connection while no event arrives."""


def check_event_arguments(
    kinds: Iterable[str] | None, max_pending: int, max_outage: float | None
) -> frozenset[EventKind] | None:
    """The kinds asked for, checked (None: every kind).

    Raises:
        InvalidArgumentError: an unknown kind, no kind, or a bad bound.
    """
    chosen: frozenset[EventKind] | None = None
    if kinds is not None:
        if isinstance(kinds, str):
            raise InvalidArgumentError(f"kinds is a collection of kinds, like {{{kinds!r}}}")
        names = list(kinds)
        unknown = sorted(str(k) for k in names if k not in EventKind._value2member_map_)
        if not names or unknown:
            known = ", ".join(k.value for k in EventKind)
            raise InvalidArgumentError(
                f"unknown event kind {', '.join(unknown) or 'in an empty set'} (known: {known})"
            )
        chosen = frozenset(EventKind(k) for k in names)
    if isinstance(max_pending, bool) or not isinstance(max_pending, int):
        raise InvalidArgumentError(f"max_pending must be an integer, got {max_pending!r}")
    if not 1 <= max_pending <= 1_000_000:
        raise InvalidArgumentError(f"max_pending must be 1 to 1000000, got {max_pending}")
    if max_outage is not None and (
        isinstance(max_outage, bool) or not isinstance(max_outage, int | float) or max_outage <= 0
    ):
        raise InvalidArgumentError(
            f"max_outage must be positive seconds or None, got {max_outage!r}"
        )
    return chosen


class _Feed:
    """What the subscriptions fill: a bounded queue (full, it drops new events, counts them
    and says so in a rate-limited warning) and whether the stream is closed.

    It refers to nothing else, so that the subscriptions' callbacks keep no stream alive.
    """

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Msg] = asyncio.Queue(size)
        self.dropped = 0
        self.closed = False
        self.problems = RateLimitedLog(_log)  # anyone may publish there: few lines

    async def put(self, msg: Msg) -> None:
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1
            self.problems.warning(
                "dropped",
                "router events: the consumer falls behind; %d dropped so far",
                self.dropped,
            )


class RouterEvents:
    """A live stream of ``RouterEvent``; made by ``client.admin.events()``.

    An async iterator, and an async context manager that subscribes on entry (the stream is
    live once inside: an event published after that is yielded) and unsubscribes on exit::

        async with client.admin.events(kinds={"role"}) as events:
            await client.admin.promote("service_b", "b2")
            async for event in events:
                ...

    Iterated without ``async with``, it subscribes at the first ``__anext__``. Cancelling a
    wait for the next event (a timeout around it) leaves the stream as it was. It ends when
    it is closed or the client closes.

    Raises (while iterating):
        IPCConnectionError: the connection was down for longer than ``max_outage``, or
            closed for good: events published meanwhile are lost.
        ClientStateError: the client is not open.
    """

    def __init__(
        self,
        link: Link,
        kinds: frozenset[EventKind] | None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_outage: float | None = DEFAULT_MAX_OUTAGE,
    ) -> None:
        self.kinds = kinds
        self._link = link
        self._max_outage = max_outage
        self._feed = _Feed(max_pending)
        self._subscriptions = _subscribed(link, kinds, self._feed)
        self._nc: NATS | None = None

    @property
    def dropped(self) -> int:
        """Events dropped because ``max_pending`` were waiting for the consumer."""
        return self._feed.dropped

    async def start(self) -> Self:
        """Subscribe (once); the stream is live when this returns.

        Raises:
            ClientStateError: the client is not open.
            IPCConnectionError: subscribing failed.
        """
        if self._nc is None and not self._feed.closed:
            self._nc = await anext(self._subscriptions)
        return self

    async def aclose(self) -> None:
        """Unsubscribe and end the stream. Safe to call twice."""
        self._feed.closed = True
        await self._subscriptions.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RouterEvent:
        await self.start()
        while self._nc is not None and not self._feed.closed:
            msg = await self._next(self._nc)
            if msg is None:
                break
            try:
                event: RouterEvent = self._link.codec.decode_envelope(msg.data, RouterEvent)
            except IPCError as e:  # a newer or broken router's event: not ours to read
                self._feed.problems.log(
                    logging.DEBUG,
                    "unreadable",
                    "router event on %s skipped: %s",
                    clip(msg.subject),
                    clip(e),
                )
                continue
            return event
        await self.aclose()
        raise StopAsyncIteration

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _next(self, nc: NATS) -> Msg | None:
        """The next message; None once the stream or the client closes.

        Raises:
            IPCConnectionError: the connection closed, or was down for over ``max_outage``.
        """
        feed, link = self._feed, self._link
        loop = asyncio.get_running_loop()
        lost_since: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL):
                    return await feed.queue.get()
            if feed.closed or link.closing:
                return None
            if nc.is_closed:
                raise IPCConnectionError(
                    servers_label(link.servers),
                    "the connection closed; router events are not replayed",
                )
            if nc.is_connected:
                lost_since = None
                continue
            lost_since = lost_since or loop.time()
            if self._max_outage is not None and loop.time() - lost_since > self._max_outage:
                raise IPCConnectionError(
                    servers_label(link.servers),
                    f"lost the connection for over {self._max_outage:g}s; router events "
                    "are not replayed",
                )


async def _subscribed(
    link: Link, kinds: frozenset[EventKind] | None, feed: _Feed
) -> AsyncGenerator[NATS]:
    """Subscribe to the events into ``feed``, yield the connection once live, and
    unsubscribe when closed (or finalized)."""
    nc = link.nats
    subjects = (
        [link.subjects.events_all]
        if kinds is None
        else [link.subjects.events(kind) for kind in sorted(kinds)]
    )
    subs = []
    try:
        try:
            for subject in subjects:
                subs.append(await nc.subscribe(subject, cb=feed.put))
            # The server has the subscriptions (nothing later is missed), or refused one.
            await link.permissions.confirm(nc, subjects)
        except nats.errors.Error as e:
            raise connection_error(link.servers, e) from e
        yield nc
    finally:
        feed.closed = True
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
