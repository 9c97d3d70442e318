"""``ReplyInbox``: many requests' replies on one wildcard subscription.

nats-py's ``nc.request`` does the same, but per request it draws a fresh NUID (a Python loop),
reads the OS's randomness (a system call), and, where a caller needs the pending reply as an
object of its own (the router's watchdog cancels it), costs a task to wrap. On the hot path
of every call that is measurable (``benchmarks/rpc.py``); here a token is a counter, the
reply is a plain future whose deadline shares a loop timer with the others of its
millisecond, and a "no responders" status is raised as nats-py
raises it (``request``) or, for a wait that asks for it, passed over (``expect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

from ipc_client_sdk._permissions import Permissions

_STATUS = "Status"
_NO_RESPONDERS = "503"

# nats-server's usual ack, read without the JSON parser; anything else is parsed in full.
_PLAIN_ACK = re.compile(
    rb'\{"stream":"([^"\\]+)",(?:"domain":"[^"\\]*",)?"seq":(\d+)(,"duplicate": ?true)?\}'
)


class ReplyInbox:
    """One wildcard subscription (``<inbox>.*``) and a future per awaited reply.

    Args:
        nc: the connection.
        permissions: where a request waits to hear that NATS refused it (its publish, or
            the inbox's subscription): it then fails at once with ``PermissionDeniedError``.
    """

    def __init__(self, nc: NATS, permissions: Permissions | None = None) -> None:
        self._nc = nc
        self._permissions = permissions
        self._prefix = ""
        self._sub: Subscription | None = None
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._patient: set[str] = set()
        self._deadlines = _Deadlines()
        self._tokens = itertools.count(1)
        self._lock = asyncio.Lock()

    async def expect(
        self, *, ignore_no_responders: bool = False
    ) -> tuple[str, asyncio.Future[Msg]]:
        """A fresh reply subject, and the future its first message completes. Call
        ``forget`` with the subject once done with it.

        ``ignore_no_responders``: a "no responders" status arriving on the subject (NATS
        sends one there when a message carrying it as its reply subject finds nobody) does
        not complete the future; the wait goes on for a real answer.

        Raises:
            nats.errors.Error: subscribing failed.
            PermissionDeniedError: NATS refused the inbox's subscription.
        """
        if self._sub is None:
            await self._subscribe()
        return self._new_wait(ignore_no_responders)

    def _new_wait(self, patient: bool) -> tuple[str, asyncio.Future[Msg]]:
        subject = f"{self._prefix}{next(self._tokens):x}"
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[subject] = future
        if patient:
            self._patient.add(subject)
        return subject, future

    async def _subscribe(self) -> None:
        async with self._lock:
            if self._sub is not None:
                return
            prefix = self._nc.new_inbox()
            sub = await self._nc.subscribe(
                f"{prefix}.*", cb=self._on_reply, pending_msgs_limit=1_000_000
            )
            if self._permissions is not None:
                try:
                    await self._permissions.confirm(self._nc, [sub.subject])
                except BaseException:
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()
                    raise
            self._sub = sub
            self._prefix = prefix + "."

    def forget(self, subject: str) -> None:
        """Stop waiting for a reply on ``subject``."""
        self._waiting.pop(subject, None)
        if self._patient:
            self._patient.discard(subject)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
        pending: dict[asyncio.Future[Msg], Any] | None = None,
        tag: object = None,
    ) -> Msg:
        """Send a request and wait ``timeout`` seconds for its reply.

        ``pending``: while waiting, the reply's future is kept there (under ``tag``), so
        that another task can cancel the wait.

        Raises:
            nats.errors.NoRespondersError: nobody is subscribed to ``subject``.
            nats.errors.TimeoutError: no reply in time.
            nats.errors.Error: the connection failed.
            PermissionDeniedError: NATS refused the publish (at once, not after ``timeout``).
            asyncio.CancelledError: the wait was cancelled.
        """
        if self._sub is None:
            await self._subscribe()
        reply, future = self._new_wait(False)
        permissions = self._permissions
        if permissions is not None:
            permissions.watch(future, "publish", subject)
        try:
            await self._nc.publish(subject, data, reply=reply, headers=headers)
            if pending is not None:
                pending[future] = tag
            msg = await self.wait(future, timeout)
        finally:
            self._waiting.pop(reply, None)
            if permissions is not None:
                permissions.unwatch(future, "publish", subject)
            if pending is not None:
                pending.pop(future, None)
        if not msg.data and is_no_responders(msg):
            raise nats.errors.NoRespondersError
        return msg

    async def wait(self, future: asyncio.Future[Msg], timeout: float) -> Msg:
        """Await a reply's future (from ``expect``) for at most ``timeout`` seconds (and
        at most a millisecond more).

        Raises:
            nats.errors.TimeoutError: no reply in time (the future is then failed with it).
            What the future was failed with: ``PermissionDeniedError``, a closing
            connection's error.
        """
        deadlines = self._deadlines
        tick = deadlines.add(future, timeout)
        try:
            return await future
        finally:
            deadlines.remove(future, tick)

    async def close(self) -> None:
        """Unsubscribe, and fail every awaited reply. Never raises."""
        self.fail_all(nats.errors.ConnectionClosedError())
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def fail_all(self, error: BaseException) -> None:
        """Fail every awaited reply (the connection is closing)."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        self._patient.clear()

    async def _on_reply(self, msg: Msg) -> None:
        subject = msg.subject
        if not msg.data and subject in self._patient and is_no_responders(msg):
            return  # not an answer: the caller waits on for one
        future = self._waiting.pop(subject, None)
        if future is not None and not future.done():
            future.set_result(msg)


def is_no_responders(msg: Msg) -> bool:
    """Whether ``msg`` is NATS's "no responders" status (503, no data)."""
    headers = msg.headers
    return not msg.data and headers is not None and headers.get(_STATUS) == _NO_RESPONDERS


_TICK = 0.001
"""Seconds per group of deadlines: a wait times out at most this much after its deadline."""


class _Deadlines:
    """The deadlines of awaited replies, grouped by the millisecond they fall in, with one
    loop timer per group.

    A timer of its own per wait (``asyncio.timeout``, ``call_later``) costs a few
    microseconds to make and cancel, on every request and every call. Here a wait joins
    its group (a set) and leaves it when answered; a group's timer is never cancelled, and
    fails what is still in its group when it fires (nothing, mostly).
    """

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[int, set[asyncio.Future[Msg]]] = {}

    def add(self, future: asyncio.Future[Msg], timeout: float) -> int:
        """Fail ``future`` with ``nats.errors.TimeoutError`` once ``timeout`` seconds have
        passed, unless ``remove`` comes first; the tick to give ``remove``."""
        loop = future.get_loop()
        tick = math.ceil((loop.time() + timeout) / _TICK)
        group = self._groups.get(tick)
        if group is None:
            group = self._groups[tick] = set()
            loop.call_at(tick * _TICK, self._expire, tick)
        group.add(future)
        return tick

    def remove(self, future: asyncio.Future[Msg], tick: int) -> None:
        """``future`` is done with: its deadline no longer matters."""
        group = self._groups.get(tick)
        if group is not None:
            group.discard(future)
            if not group:
                del self._groups[tick]

    def _expire(self, tick: int) -> None:
        for future in self._groups.pop(tick, ()):
            if not future.done():
                future.set_exception(nats.errors.TimeoutError())


async def stream_publish(
    replies: ReplyInbox,
    subject: str,
    data: bytes,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> PubAck:
    """Publish into a JetStream stream and return its ack: ``js.publish`` on the reply
    inbox (the same errors, without its per-request NUID, random token and task).

    Raises:
        nats.js.errors.NoStreamResponseError: no stream takes ``subject``.
        nats.js.errors.APIError: the stream refused the message (``err_code`` says why).
        nats.errors.TimeoutError: no ack in time (it may have been stored).
        nats.errors.Error: the connection failed.
    """
    try:
        msg = await replies.request(subject, data, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise nats.js.errors.NoStreamResponseError from None
    plain = _PLAIN_ACK.fullmatch(msg.data)
    if plain is not None:
        return PubAck(
            stream=plain[1].decode(), seq=int(plain[2]), duplicate=plain[3] is not None or None
        )
    try:
        ack = json.loads(msg.data)
        error = ack.get("error")
        if error is None:
            return PubAck(
                stream=str(ack["stream"]),
                seq=int(ack["seq"]),
                domain=ack.get("domain"),
                duplicate=ack.get("duplicate"),
            )
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise nats.js.errors.APIError(description=f"unreadable ack {msg.data[:100]!r}") from e
    if not isinstance(error, dict):
        raise nats.js.errors.APIError(description=str(error))
    raise nats.js.errors.APIError(
        code=error.get("code"),
        err_code=error.get("err_code"),
        description=error.get("description"),
        stream=ack.get("stream"),
    )


STORE_FULL_DETAIL = "store_full"
"""Key of an error reply's ``details`` naming the store that was full (the call did not run)."""

_STORE_FULL_CODES = frozenset({10002, 10023})
"""JetStream's "resource limits exceeded for account" and "insufficient resources"."""

_STORE_FAILED = 10077
"""JetStream's "the stream did not store it", with the store's reason as the description."""

_STORE_FULL_REASONS = ("maximum bytes exceeded", "maximum messages exceeded")

_TOO_LARGE = 10054
"""JetStream's "message size exceeds maximum allowed" (the stream's largest message)."""


def store_is_full(error: nats.js.errors.APIError) -> bool:
    """Whether JetStream refused a message because a stream, or the whole store, is full.

    A refusal, not a failure: nothing was stored.
    """
    if error.err_code in _STORE_FULL_CODES:
        return True
    reason = (error.description or "").lower()
    return error.err_code == _STORE_FAILED and reason.startswith(_STORE_FULL_REASONS)


def message_too_large(error: nats.js.errors.APIError) -> bool:
    """Whether JetStream refused a message for being over the stream's largest message."""
    return error.err_code == _TOO_LARGE
