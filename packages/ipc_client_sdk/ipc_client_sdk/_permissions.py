"""Permission violations, raised by the operation that NATS refused.

nats-server refuses a publish or a subscription that the client's identity may not make
with an asynchronous ``-ERR 'Permissions Violation for Publish to "subject"'`` (nats-py
lower-cases it and hands it to the connection's error callback). The publisher gets no other
sign: a request just times out, a subscription just stays silent. ``Permissions`` keeps the
operations in flight by subject, and fails them with ``PermissionDeniedError`` the moment
the violation for their subject arrives, instead of letting them wait for a timeout.

A subscription is refused before the server answers the next PING, so ``confirm`` flushes
after subscribing to learn of a refusal before ``subscribe()`` returns. nats-py writes its
PING ahead of commands still queued for its flusher, so one round trip can overtake the
SUB; the second cannot.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Iterable
from typing import Any, Literal

from nats.aio.client import Client as NATS

from ipc_client_sdk._errors import PermissionDeniedError

Operation = Literal["publish", "subscribe"]
Watched = tuple[Operation, str]
"""An operation and its subject (a pattern with ``*`` / ``>`` watches every match)."""

_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"')

_MAX_PATTERN_WATCHES = 10_000
"""Bound on wildcard watches (each is an operation in flight: a few at most)."""


def parse_violation(text: str) -> Watched | None:
    """The operation and subject of a server's permissions violation, or None for any
    other error text."""
    found = _VIOLATION.search(text.lower())
    if found is None:
        return None
    return ("publish" if found[1] == "publish" else "subscribe"), found[2]


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` matches the NATS subject ``pattern`` (``*`` one token, a final
    ``>`` one or more)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


class Permissions:
    """The operations of one connection that wait on a subject NATS might refuse."""

    def __init__(self) -> None:
        # lower-cased subject -> futures waiting on it -> the subject as the caller wrote it
        self._exact: dict[Watched, dict[asyncio.Future[Any], str]] = {}
        self._patterns: dict[asyncio.Future[Any], list[Watched]] = {}

    def watch(self, future: asyncio.Future[Any], operation: Operation, subject: str) -> None:
        """Fail ``future`` with ``PermissionDeniedError`` if NATS refuses ``operation`` on
        ``subject`` (or, for a pattern, on a subject it matches) while it is watched.
        Call ``unwatch`` with the same arguments once done."""
        if "*" in subject or ">" in subject:
            if len(self._patterns) < _MAX_PATTERN_WATCHES:
                self._patterns.setdefault(future, []).append((operation, subject))
            return
        self._exact.setdefault((operation, subject.lower()), {})[future] = subject

    def unwatch(self, future: asyncio.Future[Any], operation: Operation, subject: str) -> None:
        """Stop watching ``subject`` for ``future``."""
        if "*" in subject or ">" in subject:
            self._patterns.pop(future, None)
            return
        key = (operation, subject.lower())
        waiting = self._exact.get(key)
        if waiting is not None:
            waiting.pop(future, None)
            if not waiting:
                del self._exact[key]

    def violated(self, text: str) -> bool:
        """Fail the operations a server error refuses; whether it was a violation at all."""
        parsed = parse_violation(text)
        if parsed is None:
            return False
        operation, subject = parsed
        for future, written in self._exact.pop(parsed, {}).items():
            _deny(future, operation, written)
        for future, watched in list(self._patterns.items()):
            for op, pattern in watched:
                if op == operation and subject_matches(pattern.lower(), subject):
                    _deny(future, operation, subject)
                    del self._patterns[future]
                    break
        return True

    async def run[T](self, work: Awaitable[T], watched: Iterable[Watched]) -> T:
        """Await ``work``; raise ``PermissionDeniedError`` at once (cancelling it) if NATS
        refuses one of the ``watched`` operations meanwhile."""
        task = asyncio.ensure_future(work)
        denied: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        items = list(watched)
        for operation, subject in items:
            self.watch(denied, operation, subject)
        try:
            await asyncio.wait({task, denied}, return_when=asyncio.FIRST_COMPLETED)
            if denied.done() and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                denied.result()  # raises the refusal
            return task.result()
        finally:
            for operation, subject in items:
                self.unwatch(denied, operation, subject)
            if not task.done():  # we were cancelled
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def confirm(self, nc: NATS, subscribed: Iterable[str]) -> None:
        """Make sure the server took the subscriptions just made on ``subscribed``.

        Raises:
            PermissionDeniedError: NATS refused one of them.
            nats.errors.Error: the round trip to the server failed.
        """
        denied: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        subjects = list(subscribed)
        for subject in subjects:
            self.watch(denied, "subscribe", subject)
        try:
            # Not raced against ``denied``: nats-py's read loop breaks on the PONG of a
            # flush that was cancelled. The refusal comes first anyway.
            await nc.flush()
            await nc.flush()
        finally:
            for subject in subjects:
                self.unwatch(denied, "subscribe", subject)
        if denied.done():
            denied.result()  # raises the refusal


def _deny(future: asyncio.Future[Any], operation: Operation, subject: str) -> None:
    if not future.done():
        future.set_exception(PermissionDeniedError(subject, operation))


def jetstream_api(stream: str) -> list[Watched]:
    """The JetStream API requests about ``stream`` (info, consumers, direct gets), to watch
    while an operation makes them through nats-py."""
    return [
        ("publish", f"$JS.API.*.*.{stream}"),
        ("publish", f"$JS.API.*.*.{stream}.>"),
        ("publish", f"$JS.API.*.*.*.{stream}.>"),
    ]
