"""``CallAcks``: an instance's acks of the calls the router forwards to it.

The router forwards a durable call with the ack subject of its message in the calls stream
(the call's ``ack`` field). The instance

- acks it (``+ACK``) once the outcome is recorded, after answering the caller;
- naks it (``-NAK`` with a delay that grows with the delivery count) when it refuses the
  call unrun (fenced, routed under an old epoch, stopping): JetStream delivers it again
  and a router routes it again;
- keeps it alive (``+WPI``, in progress) while its handler runs longer than half of the
  stream consumer's ``ack_wait`` (the call's ``ack_wait``), so that a slow handler is not taken
  for a dead instance.

An instance that dies does none of these: JetStream delivers the call again after
``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import nats.errors

from ipc_client_sdk._errors import IPCError
from ipc_client_sdk._link import Link
from ipc_client_sdk._wire import Call

_DEFAULT_ACK_WAIT = 1.0
"""Seconds assumed when the router says nothing (or nothing usable) of its ``ack_wait``."""

_IN_PROGRESS = b"+WPI"
_MAX_NAK_DELAY = 0.64
"""The longest a refused call waits before it is delivered again, in seconds."""


class CallAcks:
    """Acks, naks and in-progress acks of the calls forwarded to one instance.

    Args:
        link: the client's link (its connection and subjects).
    """

    def __init__(self, link: Link) -> None:
        self._link = link
        self._stream = link.subjects.calls_stream
        self._running: dict[str, float] = {}  # ack subject -> when the call arrived
        self._wait = _DEFAULT_ACK_WAIT
        self._keeper: asyncio.Task[None] | None = None

    def subject_of(self, call: Call) -> str | None:
        """The ack subject of a forwarded call, or None when it carries none (or one that
        is not an ack subject of this deployment's calls stream)."""
        ack = call.ack
        if ack is None or not ack.startswith("$JS.ACK."):
            return None
        tokens = ack.split(".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
        # or, from servers that add a domain and an account hash, two tokens more first.
        stream = tokens[2] if len(tokens) == 9 else tokens[4] if len(tokens) >= 11 else None
        return ack if stream == self._stream else None

    def running(self, ack: str, ack_wait: float | None) -> None:
        """A forwarded call starts: keep it alive while it runs."""
        self._running[ack] = time.monotonic()
        wait = _ack_wait(ack_wait)
        if wait != self._wait:
            self._wait = wait
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep_alive(), name="ipc-call-keepalive")

    def finished(self, ack: str) -> None:
        """A forwarded call was acked or nak'ed (or its handling failed)."""
        self._running.pop(ack, None)

    async def done(self, ack: str) -> None:
        """Ack the call: its outcome is recorded (or it was answered unrecorded)."""
        await self._send(ack, b"")

    async def refused(self, ack: str) -> None:
        """Nak the call: refused unrun, it is delivered again after a short delay."""
        delay = min(0.02 * 2 ** min(_delivered(ack), 5), _MAX_NAK_DELAY)
        await self._send(ack, b'-NAK {"delay": %d}' % int(delay * 1e9))

    async def close(self) -> None:
        """Stop keeping calls alive."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None

    async def _send(self, ack: str, data: bytes) -> None:
        with contextlib.suppress(nats.errors.Error, IPCError):  # closed: redelivered anyway
            await self._link.nats.publish(ack, data)

    async def _keep_alive(self) -> None:
        while True:
            half = self._wait / 2
            await asyncio.sleep(max(half / 2, 0.05))
            cutoff = time.monotonic() - half
            for ack, arrived in list(self._running.items()):
                if arrived < cutoff:
                    await self._send(ack, _IN_PROGRESS)


def _ack_wait(seconds: float | None) -> float:
    """The router's ``ack_wait`` (a default when absent or not a sane number of seconds)."""
    if seconds is None or not (math.isfinite(seconds) and 0.05 <= seconds <= 3600):
        return _DEFAULT_ACK_WAIT
    return float(seconds)


def _delivered(ack: str) -> int:
    """The delivery count an ack subject carries (1 when it cannot be read)."""
    tokens = ack.split(".")
    index = 4 if len(tokens) == 9 else 6
    try:
        return max(1, int(tokens[index]))
    except (IndexError, ValueError):
        return 1
