"""``CallAcks``: an instance's reports on the calls a router forwards to it.

The router forwards a durable call with the ack subject of its message in the calls stream
(the call's ``ack``) and the subject of its own that it takes reports on (``done``). The
instance, on ``<done>.<service>.<verb>`` with the ack subject as the body, reports

- ``ack`` once the outcome is recorded, after answering the caller (the calls done in one
  turn of the event loop in one report, an ack subject a line);
- ``nak`` when it refuses the call unrun (fenced, routed under an old epoch, stopping,
  draining): the router naks it, and JetStream delivers it again to be routed again;
- ``wpi`` (in progress) while its handler runs longer than half of the stream consumer's
  ``ack_wait`` (the call's ``ack_wait``), so that a slow handler is not taken for a dead
  instance.

Only routers may publish on the calls stream's ack subjects (an identity that may could
pull other services' calls with ``+NXT``); an instance may report on its own service's
calls only. An instance that dies reports nothing: JetStream delivers the call again
after ``ack_wait``.
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


class CallAcks:
    """Reports on the calls forwarded to one instance.

    Args:
        link: the client's link (its connection and subjects).
        service: the service the instance serves (the reports' subject names it).
    """

    def __init__(self, link: Link, service: str) -> None:
        self._link = link
        self._service = service
        self._stream = link.subjects.calls_stream
        self._done = f"{link.subjects.prefix}.done."
        self._running: dict[str, tuple[str, float]] = {}  # ack -> (report subject, arrived)
        self._wait = _DEFAULT_ACK_WAIT
        self._keeper: asyncio.Task[None] | None = None
        self._batches: dict[str, list[str]] = {}  # report subject -> acks to report
        self._flush: asyncio.Task[None] | None = None

    def subject_of(self, call: Call) -> str | None:
        """The ack subject of a forwarded call, or None when it carries none (or one that
        is not an ack subject of this deployment's calls stream, or no router to report
        to)."""
        ack, done = call.ack, call.done
        if ack is None or done is None or not ack.startswith("$JS.ACK."):
            return None
        if not done.startswith(self._done) or "." in done[len(self._done) :]:
            return None
        tokens = ack.split(".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
        # or, from servers that add a domain and an account hash, two tokens more first.
        stream = tokens[2] if len(tokens) == 9 else tokens[4] if len(tokens) >= 11 else None
        return ack if stream == self._stream else None

    def running(self, ack: str, call: Call) -> None:
        """A forwarded call starts: report it as running while it runs past half of its
        ``ack_wait``."""
        self._running[ack] = (f"{call.done}.{self._service}.wpi", time.monotonic())
        wait = _ack_wait(call.ack_wait)
        if wait != self._wait:
            self._wait = wait
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep_alive(), name="ipc-call-keepalive")

    def finished(self, ack: str) -> None:
        """A forwarded call was reported done or refused (or its handling failed)."""
        self._running.pop(ack, None)

    async def done(self, ack: str, call: Call) -> None:
        """Report the call done: its outcome is recorded (or it was answered unrecorded).

        The calls done in one turn of the event loop are reported together, one line each
        (the caller has its answer already: the ack waits a turn, the router handles one
        message for many calls)."""
        subject = f"{call.done}.{self._service}.ack"
        batch = self._batches.get(subject)
        if batch is None:
            self._batches[subject] = [ack]
        else:
            batch.append(ack)
        if self._flush is None:
            self._flush = asyncio.create_task(self._report_done())

    async def _report_done(self) -> None:
        """Send the batched reports (after the other calls' work of this loop turn)."""
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self._batches, self._flush = {}, None  # never acked: delivered again
            raise
        batches, self._batches, self._flush = self._batches, {}, None
        for subject, acks in batches.items():
            await self._send(subject, "\n".join(acks))

    async def refused(self, ack: str, call: Call) -> None:
        """Report the call refused unrun: it is routed again."""
        await self._send(f"{call.done}.{self._service}.nak", ack)

    async def close(self) -> None:
        """Report what is batched, and stop reporting running calls."""
        if self._flush is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None

    async def _send(self, subject: str, ack: str) -> None:
        with contextlib.suppress(nats.errors.Error, IPCError):  # closed: delivered again
            await self._link.nats.publish(subject, ack.encode())

    async def _keep_alive(self) -> None:
        while True:
            half = self._wait / 2
            await asyncio.sleep(max(half / 2, 0.05))
            cutoff = time.monotonic() - half
            for ack, (report, arrived) in list(self._running.items()):
                if arrived < cutoff:
                    await self._send(report, ack)


def _ack_wait(seconds: float | None) -> float:
    """The router's ``ack_wait`` (a default when absent or not a sane number of seconds)."""
    if seconds is None or not (math.isfinite(seconds) and 0.05 <= seconds <= 3600):
        return _DEFAULT_ACK_WAIT
    return float(seconds)
