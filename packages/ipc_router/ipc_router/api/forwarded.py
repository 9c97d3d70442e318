"""``ForwardedCalls``: the durable calls a router forwarded, and their acks.

The instance a call is forwarded to answers the caller itself, but only a router acks the
call's message in the calls stream. A JetStream ack subject names the stream and the
consumer, not the service, and nats-server reads the verb from the message body: an
identity allowed to publish there could pull other services' calls (``+NXT``), terminate
them (``+TERM``) or ack them before they ran. So instances hold no right on ``$JS.ACK``;
each reports the end of a call to the router that forwarded it, on
``<prefix>.done.<router token>.<service>.<verb>`` with the call's ack subject as the body
(``ack``: answered and recorded; ``nak``: refused unrun, to be routed again; ``wpi``:
still running), one ack subject a line. NATS lets an identity publish there for its own service only, and the
router acts on a report only for a call it forwarded to that service: a service can end
its own calls early (it could as well not answer them), no one else's.

A report the router does not know (it restarted, or the report was late) changes nothing:
the call is delivered again after ``ack_wait`` and answered from its record.

Until the report comes, the router keeps each call alive (``+WPI`` every quarter of
``ack_wait``) while the instance it went to is alive by the router's table (registered
under the same session, healthy): a call waiting in a busy instance's queue is not
delivered again to the same queue. Once the instance is not, the call is left to
JetStream, which delivers it again after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ipc_client_sdk.protocol import RateLimitedLog, Subjects, clip
from ipc_router.application.inflight import InflightTracker

_log = logging.getLogger("ipc_router.calls")

_IN_PROGRESS = b"+WPI"
_MAX_NAK_DELAY = 0.64
"""The longest a refused call waits before it is delivered again, in seconds."""

VERBS = ("ack", "nak", "wpi")
"""What an instance reports of a forwarded call."""

_MAX_LINES = 4096
"""Ack subjects one report names at most (an instance reports what it finished in one turn
of its event loop; the router's consumer has at most 4,096 calls out at once)."""


Alive = Callable[[str, str, str], bool]
"""Whether an instance (service, instance id, session) is alive by the router's table."""


class _Forwarded:
    """One forwarded call: where it went, and when it was last kept alive."""

    __slots__ = ("heard", "instance_id", "service", "session")

    def __init__(self, service: str, instance_id: str, session: str, heard: float) -> None:
        self.service = service
        self.instance_id = instance_id
        self.session = session
        self.heard = heard


class ForwardedCalls:
    """The calls one router forwarded and has not heard the end of, by ack subject.

    Args:
        nc: the router's connection.
        subjects: the subject map.
        ack_wait: seconds JetStream waits for an ack; a call nobody reported on for four
            times that is forgotten (JetStream delivers it again meanwhile).
        tracker: counts the calls in flight to each instance, from their forward to their
            report (a handover waits on it, the views show it).
    """

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        *,
        ack_wait: float,
        tracker: InflightTracker | None = None,
    ) -> None:
        self._nc = nc
        self.tracker = tracker or InflightTracker()
        self.subject = f"{subjects.prefix}.done.{os.urandom(6).hex()}"
        """Where this router's instances report: ``<subject>.<service>.<verb>``."""
        self.ack_wait = ack_wait
        self._calls: dict[str, _Forwarded] = {}
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._problems = RateLimitedLog(_log)
        self.alive: Alive | None = None
        """The router's table's word on an instance (the leader's, or a standby's copy);
        None: keep no call alive."""

    def __len__(self) -> int:
        return len(self._calls)

    async def start(self) -> None:
        """Take reports.

        Raises:
            nats.errors.Error: the subscription failed.
        """
        self._sub = await self._nc.subscribe(
            f"{self.subject}.*.*", cb=self._on_report, pending_msgs_limit=1_000_000
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="ipc-router-forwarded")

    async def stop(self) -> None:
        """Take no more reports."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    def note(self, ack: str, service: str, instance_id: str, session: str) -> None:
        """A call was forwarded to an instance."""
        if ack in self._calls:
            return
        self._calls[ack] = _Forwarded(service, instance_id, session, time.monotonic())
        self.tracker.add(service, instance_id)

    def _forget(self, ack: str, call: _Forwarded) -> None:
        del self._calls[ack]
        self.tracker.done(call.service, call.instance_id)

    async def _on_report(self, msg: Msg) -> None:
        subject = msg.subject
        verb = subject[subject.rfind(".") + 1 :]
        service = subject[: -len(verb) - 1].rsplit(".", 1)[-1]
        if verb not in VERBS:
            return
        try:
            acks = msg.data.decode().split("\n")
        except UnicodeDecodeError:
            return
        calls = self._calls
        for ack in acks[:_MAX_LINES]:
            call = calls.get(ack)
            if call is None or call.service != service:
                self._problems.log(
                    logging.DEBUG,
                    "unknown-report",
                    "ignoring a report (%s) from %s on a call it was not forwarded: %s",
                    clip(verb),
                    clip(service),
                    clip(ack),
                )
                continue
            if verb == "wpi":
                call.heard = time.monotonic()
                data = _IN_PROGRESS
            else:
                self._forget(ack, call)
                data = b"" if verb == "ack" else _nak(ack)
            with contextlib.suppress(nats.errors.Error):  # not acked: delivered again
                await self._nc.publish(ack, data)

    async def _sweep(self) -> None:
        """Keep alive the calls whose instances live; forget those nobody kept alive for
        four ``ack_wait`` (JetStream has delivered them again meanwhile)."""
        while True:
            await asyncio.sleep(max(self.ack_wait / 4, 0.05))
            now = time.monotonic()
            due, cutoff = now - self.ack_wait / 2, now - 4 * self.ack_wait
            alive = self.alive
            for ack, call in list(self._calls.items()):
                if call.heard >= due:
                    continue
                if alive is not None and alive(call.service, call.instance_id, call.session):
                    call.heard = now
                    with contextlib.suppress(nats.errors.Error):
                        await self._nc.publish(ack, _IN_PROGRESS)
                elif call.heard < cutoff:
                    self._forget(ack, call)


def _nak(ack: str) -> bytes:
    """A nak whose delay grows with the delivery count the ack subject carries."""
    delay = min(0.02 * 2 ** min(_delivered(ack), 5), _MAX_NAK_DELAY)
    return b'-NAK {"delay": %d}' % int(delay * 1e9)


def _delivered(ack: str) -> int:
    """The delivery count an ack subject carries (1 when it cannot be read)."""
    tokens = ack.split(".")
    index = 4 if len(tokens) == 9 else 6
    try:
        return max(1, int(tokens[index]))
    except (IndexError, ValueError):
        return 1
