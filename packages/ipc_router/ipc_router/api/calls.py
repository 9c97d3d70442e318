"""The call path: take accepted calls from the calls stream, route them, forward them.

For each message of the durable pull consumer the router

1. reads the ``CallRequest`` (a body it cannot read is answered on the ``Ipc-Reply-To``
   header when there is one, and terminated either way, so it is never redelivered);
2. answers ``DEADLINE_EXCEEDED`` at once when the caller's deadline has passed (steps 2 to
   4 are ``CallRelay`` in ``api/relay.py``);
3. asks the registry for the instance (claims, then sticky assignment, then round robin);
   while a standby is about to take over (or a handover is under way) the call waits for
   it;
4. forwards the request, with the epoch, the delivery count and the caller named by the
   subject's last token (never the body's), to the instance's inbox, with the caller's
   reply address as its reply subject and the message's ack subject (``ack``) and this
   router's report subject (``done``) in the body.

The instance then answers the caller, records the outcome, and reports the call done; the
router acks the message (``api/forwarded.py``). A call the instance refuses unrun (fenced,
routed under an old epoch, stopping, draining) it reports refused; the router naks it, and
JetStream delivers it again to be routed again. An instance that dies holding a call, or a
forward lost on the way, leaves the message un-acked: JetStream delivers it again after
``ack_wait`` to whichever router pulls next. What the router answers itself (an error: no
such method, no instance, a bad request) it publishes to the reply address and then acks.

Calls the router holds for longer than half of ``ack_wait`` (waiting for a standby to take
over) are kept alive with ``in_progress``; so ``ack_wait`` can be short (1 s by default),
and the calls a dead leader held reach the next leader about when it takes over.

Before taking a call (steps 1 and 3) the consumer asks whether the router's leadership
term still runs (``in_term``): a leader that wakes from a freeze with calls waiting in
its socket leaves them un-acked for the next leader instead of routing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header

from ipc_client_sdk import CodecError
from ipc_client_sdk.protocol import (
    REPLY_TO_HEADER,
    CallReply,
    CallRequest,
    Codec,
    ErrorCode,
    ErrorInfo,
    Subjects,
    clip,
)
from ipc_router.api.forwarded import ForwardedCalls
from ipc_router.api.relay import (
    CALL_PROBLEMS,
    CallRelay,
    ClaimReader,
    FastRoute,
    Later,
    OutOfTerm,
    Refused,
    usable_reply_address,
)
from ipc_router.application.ports import NoRouterMetrics, RouterMetrics
from ipc_router.application.registry import InstanceRegistry

_log = logging.getLogger("ipc_router.calls")

_PULLS = 2
"""Pull requests outstanding at once: the next is on its way while the first delivers."""

_PULL_BATCH = 256
"""Calls one pull request asks for at most."""

_PULL_BATCH_QUARTER = _PULL_BATCH // 4

_PULL_BYTES = 16 * 1024 * 1024
"""Bytes one pull request may bring in at most: with ``_PULLS`` of them, 32 MiB at most are
on their way to the router, well under the 64 MiB behind which nats-server drops a
connection, whatever the calls' size."""

_PULL_EXPIRES = 1.0
"""Seconds a pull request waits for calls before the server ends it (and one is sent anew).
One the server lost (it restarted) is forgotten half a second after that. Short, so that
the pull requests of a leader that froze end about when another router can lead, rather
than keep taking calls into a socket nobody reads."""

_PULL_RETRY = 1.0
"""Seconds before asking again after the server refused a pull request (no consumer, no
JetStream, a leader election): then the consumer is looked up, and made again if missing."""

_STATUS = "Status"
_DESCRIPTION = "Description"
_HEARTBEAT = "100"
_EXPIRED = "408"
_DONE = "409"
_DONE_BECAUSE = ("Message Size Exceeds MaxBytes", "Batch Completed")
"""A 409 that only says the request got what it could (its bytes): ask again at once."""


class CallConsumer:
    """Consumes the calls stream and forwards each call to its instance.

    Args:
        nc: the router's connection.
        js: its JetStream context.
        subjects: the subject map.
        codec: the envelope codec.
        registry: routing decisions and instance health.
        max_inflight: calls this router handles at once (and asks JetStream for).
        claims: reads a call's claim in the results bucket (for calls delivered again).
        forwarded: the calls this router forwarded, acked when their instances report.
        ack_wait: seconds JetStream waits for an ack before it redelivers a call.
        router_id: this router's id, named on each forwarded call.
        route_now: a standby router's routing (``registry`` is then None): what it cannot
            route at once is left to the leader.
        owns: whether a reply address lies in the caller's own inbox (``--auth-dir``).
        configure: whether to make the consumer, or set its ``ack_wait`` (the leader's
            job); a standby router binds to it as it is.
        in_term: whether this router's leadership term still runs; calls are taken and
            routed only while it does.
        metrics: counts the calls answered, their outcome and routed time.
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        subjects: Subjects,
        codec: Codec,
        registry: InstanceRegistry | None,
        claims: ClaimReader,
        forwarded: ForwardedCalls,
        *,
        max_inflight: int = 1024,
        ack_wait: float = 5.0,
        router_id: str = "",
        route_now: FastRoute | None = None,
        owns: Callable[[str, str], bool] | None = None,
        configure: bool = True,
        in_term: Callable[[], bool] = lambda: True,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self._nc = nc
        self._in_term = in_term
        self._metrics = metrics = metrics or NoRouterMetrics()
        self._js = js
        self._subjects = subjects
        self._codec = codec
        self._max_inflight = max_inflight
        self._ack_wait = ack_wait
        self._inflight: dict[asyncio.Task[None], tuple[Msg, float]] = {}
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._deliveries: Subscription | None = None
        self._pulls: dict[str, list[float]] = {}
        """Each outstanding pull request by its own reply subject: [calls it may still bring,
        when it was sent (monotonic), calls it asked for]. The server deals calls out among
        the requests, so each is accounted on its own subject."""
        self._oversized = False  # the next call is larger than a pull's byte allowance
        self._pull_ids = itertools.count(1)
        self._wake = asyncio.Event()  # room for calls: ask for more
        self._refused = False  # the server refused a pull request: wait, then re-bind
        self._problems = CALL_PROBLEMS
        self._relay = CallRelay(
            nc,
            subjects,
            codec,
            registry,
            claims,
            forwarded,
            ack_wait,
            router_id,
            in_term,
            metrics,
            route_now,
            owns,
        )
        self._configure = configure

    async def start(self) -> None:
        """Bind the durable consumer (creating it when missing) and start pulling calls.

        Calls are pulled continuously: up to ``_PULLS`` pull requests are kept outstanding,
        each for as many calls as there is room for (and at most ``_PULL_BYTES``), and each
        delivery is handled as it arrives, with no fetch round trip in between.
        """
        try:
            await self._bind()
        except nats.errors.Error:
            if self._configure:
                raise
            self._refused = True  # a standby router: bound again until the leader made it
        stream, durable = self._subjects.calls_stream, self._subjects.calls_consumer
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._deliver = self._nc.new_inbox()
        self._deliveries = await self._nc.subscribe(
            f"{self._deliver}.*", cb=self._on_delivery, pending_msgs_limit=self._max_inflight * 4
        )
        self._wake.set()
        self._tasks = [
            asyncio.create_task(self._pull_loop(), name="ipc-router-pull"),
            asyncio.create_task(self._keep_alive(), name="ipc-router-keepalive"),
        ]

    async def _bind(self) -> None:
        """Look the durable consumer up, and make it when it is missing.

        Raises:
            nats.errors.Error: JetStream did not answer or refused.
        """
        stream, durable = self._subjects.calls_stream, self._subjects.calls_consumer
        try:
            info = await self._js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            if not self._configure:
                raise  # a standby router waits for the leader to make it
            info = await self._js.add_consumer(
                stream,
                config=ConsumerConfig(
                    durable_name=durable,
                    filter_subject=self._subjects.calls_all,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self._ack_wait,
                    max_ack_pending=max(self._max_inflight * 4, 4096),
                    max_deliver=-1,
                ),
            )
        actual = info.config.ack_wait
        if actual and not self._configure:
            self._ack_wait = actual
        elif actual and abs(actual - self._ack_wait) > 0.001:
            # The leader sets the redelivery delay of the calls it consumes (a deployment
            # started with another --call-ack-wait keeps its consumer otherwise).
            try:
                info = await self._js.add_consumer(
                    stream, config=info.config.evolve(ack_wait=self._ack_wait)
                )
                _log.info("consumer %s: ack_wait %gs (was %gs)", durable, self._ack_wait, actual)
            except nats.js.errors.APIError as e:
                # Keep-alives must follow the value JetStream applies.
                _log.warning(
                    "consumer %s keeps its ack_wait of %gs (asked for %gs: %s); using %gs",
                    durable,
                    actual,
                    self._ack_wait,
                    e.description or e,
                    actual,
                )
                self._ack_wait = actual
        self._relay.ack_wait = self._ack_wait

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop pulling, give in-flight calls ``grace`` seconds, then abandon the rest.

        An abandoned call is not acked, so JetStream redelivers it to another router.
        """
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._deliveries is not None:
            # Calls an outstanding pull brings in after this are not acked and come back.
            with contextlib.suppress(nats.errors.Error):
                await self._deliveries.unsubscribe()
            self._deliveries = None
        pending = list(self._inflight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    @property
    def inflight(self) -> int:
        """Calls being handled right now."""
        return len(self._inflight)

    # --- pulling -------------------------------------------------------------------------
    async def _pull_loop(self) -> None:
        """Keep pull requests outstanding for the room there is (woken when room frees)."""
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._pull()
            except Exception:  # never stop taking calls over one bad turn
                _log.exception("asking for calls failed")
                await asyncio.sleep(_PULL_RETRY)
                self._wake.set()

    async def _pull(self) -> None:
        """One turn of the pull loop."""
        if self._refused:
            await asyncio.sleep(_PULL_RETRY)
            try:
                await self._bind()
            except nats.errors.Error as e:
                _log.warning("the calls consumer is not available (%s); retrying", e)
                self._wake.set()
                return
            self._refused = False
        now = time.monotonic()
        for subject, (_, sent, _) in list(self._pulls.items()):
            if now - sent > _PULL_EXPIRES + 0.5:
                del self._pulls[subject]  # expired, whether or not the end was announced
        while len(self._pulls) < _PULLS:
            room = self._max_inflight - len(self._inflight) - self._pulled()
            batch = min(room, _PULL_BATCH)
            if batch <= 0 or (self._pulls and batch < _PULL_BATCH // 4):
                break  # no room, or too little for a second request to be worth it
            request: dict[str, int] = {"batch": batch, "expires": int(_PULL_EXPIRES * 1e9)}
            if self._oversized:
                # A call larger than any pull's allowance heads the stream: take it alone,
                # so it can be answered (too large) and removed instead of blocking the rest.
                self._oversized, request["batch"], batch = False, 1, 1
            else:
                request["max_bytes"] = _PULL_BYTES
            reply = f"{self._deliver}.{next(self._pull_ids):x}"
            self._pulls[reply] = [batch, now, batch]
            try:
                await self._nc.publish(self._next, json.dumps(request).encode(), reply=reply)
            except nats.errors.Error as e:
                del self._pulls[reply]
                _log.warning("asking for calls failed (%s); retrying", e or type(e).__name__)
                await asyncio.sleep(0.5)
                self._wake.set()
                break

    def _pulled(self) -> int:
        """Calls the outstanding pull requests may still bring."""
        return int(sum(pull[0] for pull in self._pulls.values()))

    async def _on_delivery(self, msg: Msg) -> None:
        """A call, or the server's word on one of our pull requests."""
        pull = self._pulls.get(msg.subject)
        status = msg.headers.get(_STATUS) if msg.headers and not msg.reply else None
        if status is not None:
            if status == _HEARTBEAT:
                return
            self._pulls.pop(msg.subject, None)  # that request is over
            headers = msg.headers or {}
            # nats-py keys a status's description by its Header enum, not the string.
            description = headers.get(Header.DESCRIPTION) or headers.get(_DESCRIPTION) or ""
            if status == _DONE and description == _DONE_BECAUSE[0] and pull and pull[0] == pull[2]:
                self._oversized = True  # not even one call fitted in its allowance
            if status != _EXPIRED and not (status == _DONE and description in _DONE_BECAUSE):
                # No consumer, no JetStream, a leader election: do not ask again at once.
                if not self._refused:
                    _log.warning("the server refused a pull for calls: %s %s", status, description)
                self._refused = True
            self._wake.set()
            return
        if pull is not None:
            pull[0] -= 1
            if pull[0] <= 0:
                del self._pulls[msg.subject]
                self._wake.set()
            elif pull[0] % _PULL_BATCH_QUARTER == 0:
                self._wake.set()  # calls forwarded at once free room as they arrive
        if self._stopping or not self._in_term():
            return  # not acked: redelivered to the next router
        try:
            if await self._relay.forward_now(msg):
                return
        except nats.errors.Error as e:
            self._problems.warning(
                "interrupted", "forwarding a call failed (%s); left for redelivery", clip(e)
            )
            return
        task = asyncio.create_task(self._process(msg))
        self._inflight[task] = (msg, time.monotonic())
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._wake.set()
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._problems.error("handling", "call handling failed", exc_info=error)

    async def _keep_alive(self) -> None:
        half = self._ack_wait / 2
        while True:
            await asyncio.sleep(min(half / 2, 1.0))
            self._wake.set()  # also lets the pull loop forget pull requests the server lost
            cutoff = time.monotonic() - half
            for msg, started in list(self._inflight.values()):
                if started < cutoff:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()

    # --- one call ------------------------------------------------------------------------
    async def _process(self, msg: Msg) -> None:
        started = time.perf_counter()
        reply_to = (msg.headers or {}).get(REPLY_TO_HEADER)
        try:
            request = self._codec.decode_envelope(msg.data, CallRequest)
        except CodecError as e:
            self._problems.warning(
                "unreadable",
                "refusing an unreadable call on %s: %s",
                clip(msg.subject),
                clip(e.message),
            )
            if usable_reply_address(reply_to):
                await self._answer(reply_to, CallReply(call_id="", error=_info(e.code, e.message)))
            await msg.term()
            return
        reply_to = request.reply_to or reply_to
        caller = msg.subject[msg.subject.rfind(".") + 1 :]
        owns = self._relay.owns
        if not usable_reply_address(reply_to) or (owns is not None and not owns(caller, reply_to)):
            # Not a subject the caller itself can read: nobody is answered there.
            self._problems.warning(
                "no-reply-address",
                "call %s on %s has no usable reply address (%s); dropped",
                clip(request.call_id),
                clip(msg.subject),
                clip(reply_to),
            )
            await msg.term()
            return
        try:
            await self._relay.relay(msg, request, reply_to)
        except OutOfTerm:
            return  # not acked: redelivered to the next leader
        except Later as e:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=e.delay)
            return
        except Refused as e:
            await self._refuse(msg, request, reply_to, e.code, e.message, started)
        except nats.errors.Error as e:
            # Lost the connection mid-call: leave the message un-acked for redelivery.
            self._problems.warning(
                "interrupted",
                "call %s interrupted (%s); left for redelivery",
                clip(request.call_id),
                clip(e),
            )
        except Exception:
            # A bug must not turn the call into a poison message redelivered for a day.
            self._problems.exception("routing", "routing call %s failed", clip(request.call_id))
            message = "the router failed the call"
            await self._refuse(msg, request, reply_to, ErrorCode.INTERNAL, message, started)

    async def _refuse(
        self,
        msg: Msg,
        request: CallRequest,
        reply_to: str,
        code: ErrorCode,
        message: str,
        started: float,
    ) -> None:
        """Answer the caller with the router's own error, then ack the message."""
        try:
            await self._nc.publish(reply_to, self._refusal(request, code, message))
            await msg.ack()
        except nats.errors.Error as e:
            self._problems.warning(
                "reply-not-sent",
                "call %s: reply not sent (%s); left for redelivery",
                clip(request.call_id),
                clip(e),
            )
            return
        seconds = time.perf_counter() - started
        self._metrics.call_refused(request.service, request.method, code, seconds)

    def _refusal(self, request: CallRequest, code: ErrorCode, message: str) -> bytes:
        return self._codec.encode_envelope(
            CallReply(call_id=request.call_id, service=request.service, error=_info(code, message))
        )

    async def _answer(self, reply_to: str, reply: CallReply) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(reply_to, self._codec.encode_envelope(reply))


def _info(code: ErrorCode, message: str) -> ErrorInfo:
    return ErrorInfo(code=code, message=message, retryable=code.retryable)
