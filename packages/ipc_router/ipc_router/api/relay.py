"""Routing one call and forwarding it to its instance (steps 2 to 4 in ``api/calls.py``).

``CallRelay.relay`` runs named steps in a loop until the call is forwarded or gets a
terminal error: ``_check``, ``_deadline`` and, for a call delivered again, ``_abandoned``
once; then ``_time_left``, ``_route`` and ``_forward`` per attempt. What the attempts learnt
(an instance that died while it held the call) is kept in one ``_Attempts``.

The router is off the reply path: it forwards the call to the instance's inbox with the
caller's reply address as the message's reply subject, and the stream message's ack
subject and its own report subject in the body (``ack``, ``done``); the instance answers
the caller, records the outcome and reports the call done (or refused unrun), and the
router acks (or naks it, and JetStream delivers it again to be routed again;
``api/forwarded.py``). An instance that dies holding a call reports nothing: JetStream
delivers it again after ``ack_wait``, and ``_abandoned`` reads the call's claim in the
results bucket to tell the next instance which one died holding it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeGuard

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ipc_client_sdk.protocol import (
    REPLY_TO_HEADER,
    TRACE_HEADERS,
    CallRequest,
    Codec,
    ErrorCode,
    RateLimitedLog,
    Subjects,
    Traced,
    claim_holder,
    continue_routed,
    failed,
    is_token,
    read_call,
    tracing_loaded,
    validate_call_id,
    validate_token,
)
from ipc_router.api.forwarded import ForwardedCalls
from ipc_router.application.ports import NoRouterMetrics, RouterMetrics
from ipc_router.application.registry import InstanceRegistry
from ipc_router.domain import (
    FailoverPendingError,
    Health,
    Route,
    RoutingError,
    UnknownMethodError,
)

_log = logging.getLogger("ipc_router.calls")

CALL_PROBLEMS = RateLimitedLog(_log)
"""What callers and instances cause on the call path, one limiter per process: a leader
that steps down and leads again (a new term) keeps counting instead of starting over."""

DEFAULT_CALL_TIMEOUT = 30.0
"""Seconds a call without a deadline may take (the SDK always sends a deadline)."""

MAX_CALL_TIME = 3600.0
"""The longest the router waits for one call, whatever its deadline says."""

RETRY_LATER = 1.0
"""Seconds before a redelivered call that cannot be routed yet is delivered again."""

_CHANGE_WAIT = 0.25
"""The longest one wait for the routing table to change (a failover, a handover)."""

ClaimReader = Callable[[str], Awaitable[bytes | None]]
"""Reads a call's key in the results bucket: its claim or outcome, None when there is none
(or the bucket did not answer)."""


# A reply address is one NATS subject: printable, no white space, no wildcards, no empty
# token. Anything else would corrupt the router's protocol stream, so it is refused.
_TOKEN_CHARS = r"[!-)+-\-/-=?-~]+"  # printable ASCII but '*', '.' and '>'
_SUBJECT = re.compile(rf"^{_TOKEN_CHARS}(\.{_TOKEN_CHARS})*$")

_MAX_REPLY_TO = 512
"""A longer reply subject is refused: NATS closes a connection whose protocol line is too
long, and a reply address is part of one."""

REPLY_PREFIX = "_INBOX."
"""The only subjects a router answers calls on. The router publishes with its own rights
(every subject of the deployment, its buckets' ``$KV`` subjects): a reply address a caller
chose freely would make it a deputy that writes a forged result into another service's
record, or the router lease, on the caller's behalf."""


def usable_reply_address(reply_to: str | None) -> TypeGuard[str]:
    """Whether a reply address is one publishable inbox subject (never trust a raw
    publisher)."""
    return (
        reply_to is not None
        and len(reply_to) <= _MAX_REPLY_TO
        and reply_to.startswith(REPLY_PREFIX)
        and _SUBJECT.fullmatch(reply_to) is not None
    )


class Later(Exception):
    """The call cannot be routed yet: leave it for redelivery (nak with ``delay``)."""

    def __init__(self, delay: float = RETRY_LATER) -> None:
        self.delay = delay
        super().__init__(f"delivered again in {delay:g}s")


STANDBY_RETRY = 0.1
"""Seconds before a call a standby router cannot route at once is delivered again (to
whichever router pulls next: the leader routes what a standby cannot)."""

FastRoute = Callable[[str, str, str | None], Route | None]
"""A standby router's routing: the route, or None to leave the call to the leader."""


class OutOfTerm(Exception):
    """This router's leadership term ended: leave the call un-acked for the next leader."""


class Refused(Exception):
    """The call gets a terminal error reply; the message is acked."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass(slots=True)
class _Attempts:
    """What the attempts at delivering one call have learnt so far."""

    deadline: float
    """The caller's deadline (Unix time), bounded by ``MAX_CALL_TIME``."""
    delivery: int
    """JetStream's delivery count for the message (above 1: it may have run already)."""
    abandoned: str | None = None
    """An instance that failed while it held the call."""
    abandoned_since: float = 0.0
    """When that instance was last heard of (Unix time; 0: it left the registry)."""


class CallRelay:
    """Routes a call and forwards it to its instance.

    Args:
        nc: the router's connection (forwards are core publishes).
        subjects: the subject map.
        codec: the envelope codec.
        registry: routing decisions and instance health (the leader's); None on a standby
            router, which routes only with ``route_now`` and leaves the rest to the leader.
        claims: reads a call's claim in the results bucket (for calls delivered again).
        forwarded: the calls this router forwarded, acked when their instances report.
        ack_wait: seconds JetStream waits for a call's ack (told to the instance).
        router_id: this router's id, sent with each forwarded call (its ``router``).
        in_term: whether this router's leadership term still runs (asked before each
            forward).
        metrics: counts redeliveries.
        route_now: a standby router's routing (its copy of the table).
        owns: whether a reply address lies in the caller's own inbox (under
            ``--auth-dir``); None: any ``_INBOX.`` address is taken.
    """

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        codec: Codec,
        registry: InstanceRegistry | None,
        claims: ClaimReader,
        forwarded: ForwardedCalls,
        ack_wait: float,
        router_id: str = "",
        in_term: Callable[[], bool] = lambda: True,
        metrics: RouterMetrics | None = None,
        route_now: FastRoute | None = None,
        owns: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._route_now = route_now
        self.owns = owns
        self._nc = nc
        self._router_id = router_id or None
        self._in_term = in_term
        self._metrics = metrics or NoRouterMetrics()
        self._subjects = subjects
        self._codec = codec
        self._leaders = registry
        self._claims = claims
        self._forwarded = forwarded
        self._ack_wait = ack_wait
        self._problems = CALL_PROBLEMS

    async def forward_now(self, msg: Msg) -> bool:
        """Forward a call in the common case, without a task, a model or a span: a first
        delivery of a well-formed call that routes at once, while no tracer may record.
        False, having done nothing, when the call needs anything else (``relay`` then
        handles it: refusals, waits, redeliveries, traces).

        Raises:
            nats.errors.Error: the forward could not be published.
        """
        ack = msg.reply
        tokens = ack.split(".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<...>: only a first delivery goes fast.
        if len(tokens) != 9 or tokens[4] != "1" or tracing_loaded():
            return False
        raw = read_call(msg.data, self._codec.max_envelope)
        if raw is None:
            return False
        headers = msg.headers
        reply_to = raw.get("reply_to") or (headers.get(REPLY_TO_HEADER) if headers else None)
        subject = msg.subject
        caller = subject[subject.rfind(".") + 1 :]
        service, method, resource_id = raw["service"], raw["method"], raw.get("resource_id")
        deadline = raw.get("deadline")
        now = time.time()
        if (
            not usable_reply_address(reply_to)
            or (self.owns is not None and not self.owns(caller, reply_to))
            or not is_token(raw["call_id"])
            or not (resource_id is None or is_token(resource_id))
            or not (is_token(service) and is_token(method) and is_token(caller))
            or subject != f"{self._subjects.prefix}.call.{service}.{method}.{caller}"
            or deadline is None
            or not (now < deadline < now + MAX_CALL_TIME)
            or not self._in_term()
        ):
            return False
        try:
            if self._route_now is not None:
                found = self._route_now(service, method, resource_id)
                if found is None:
                    return False
                route = found
            else:
                route = await self._registry.route(service, method, resource_id)
            inbox = self._subjects.instance_inbox(service, route.instance_id, route.session)
        except (RoutingError, ValueError, Later):
            return False
        raw.update(self._stamp(ack, route, 1, None))
        raw["caller"] = caller
        passed: dict[str, str] | None = None
        if headers:
            passed = {key: headers[key] for key in TRACE_HEADERS if key in headers} or None
        await self._send(inbox, _pack(raw), reply_to, passed, ack, service, route)
        return True

    async def relay(self, msg: Msg, request: CallRequest, reply_to: str) -> str:
        """Route the call and forward it; the instance it went to.

        The caller's trace continues in a span of this router's, when it has a tracer
        provider; the instance gets the trace headers either way (``continue_routed``).

        Raises:
            Refused: a terminal error for the caller.
            Later: the call cannot be routed yet; leave it for redelivery.
            OutOfTerm: the leadership term ended; leave it for the next leader.
            nats.errors.Error: the router's own connection failed.
        """
        delivery = msg.metadata.num_delivered
        with continue_routed(
            msg.headers, request.service, request.method, request.call_id, msg.subject, delivery
        ) as traced:
            try:
                return await self._relay(msg, request, reply_to, traced)
            except Refused as e:
                failed(code=e.code.value, message=e.message)
                raise
            except (Later, OutOfTerm) as e:
                if traced is not None:
                    traced.set("ipc.outcome", "later" if isinstance(e, Later) else "out-of-term")
                raise
            except Exception as e:
                failed(e)
                raise

    @property
    def _registry(self) -> InstanceRegistry:
        """The leader's registry.

        Raises:
            Later: this is a standby router: the call is left to the leader.
        """
        if self._leaders is None:
            raise Later(STANDBY_RETRY)
        return self._leaders

    @property
    def ack_wait(self) -> float:
        """Seconds JetStream waits for a call's ack (the instance is told, to keep long
        calls alive)."""
        return self._ack_wait

    @ack_wait.setter
    def ack_wait(self, seconds: float) -> None:
        self._ack_wait = self._forwarded.ack_wait = seconds

    async def _relay(
        self, msg: Msg, request: CallRequest, reply_to: str, traced: Traced | None
    ) -> str:
        """``relay``'s steps, in its span."""
        request = self._check(msg, request)
        attempts = _Attempts(self._deadline(request), msg.metadata.num_delivered)
        headers = (traced.headers or None) if traced is not None else None
        if self._leaders is None:  # a standby router: its copy routes a first delivery
            found = self._standby_route(request, attempts)
            if found is None or not self._in_term():
                raise Later(STANDBY_RETRY)  # left to the leader
            if traced is not None:
                traced.set("ipc.instance_id", found.instance_id)
            if await self._forward(request, found, attempts, reply_to, msg.reply, headers):
                return found.instance_id
            raise Later(STANDBY_RETRY)
        if attempts.delivery > 1:
            self._metrics.call_redelivered()
            self._problems.log(
                logging.INFO,
                "redelivered",
                "call %s delivered again (delivery %d)",
                request.call_id,
                attempts.delivery,
                extra={"call_id": request.call_id, "service": request.service},
            )
            await self._abandoned(request, attempts)
        while True:
            remaining = self._time_left(attempts)
            route = await self._route(request, attempts, remaining)
            if route is None:
                continue  # waited for the table to change
            if not self._in_term():
                raise OutOfTerm
            if traced is not None:
                traced.set("ipc.instance_id", route.instance_id)
            if await self._forward(request, route, attempts, reply_to, msg.reply, headers):
                return route.instance_id

    def _check(self, msg: Msg, request: CallRequest) -> CallRequest:
        """Refuse a call whose names are not tokens or that came on another's subject; the
        request with its caller taken from the subject's last token (NATS lets an identity
        publish as itself only), whatever its body says."""
        caller = msg.subject.rsplit(".", 1)[-1]
        try:
            expected = self._subjects.call(request.service, request.method, caller)
            validate_call_id(request.call_id)
            if request.resource_id is not None:
                validate_token(request.resource_id, "resource_id")
        except ValueError as e:
            raise Refused(ErrorCode.INVALID_ARGUMENT, str(e)) from e
        if msg.subject != expected:
            raise Refused(
                ErrorCode.INVALID_ARGUMENT,
                f"call for {request.service}.{request.method} was published on {msg.subject}",
            )
        return request.model_copy(update={"caller": caller})

    @staticmethod
    def _deadline(request: CallRequest) -> float:
        """The caller's deadline (a default when it sent none), at most ``MAX_CALL_TIME``
        away."""
        now = time.time()
        deadline = request.deadline if request.deadline is not None else now + DEFAULT_CALL_TIMEOUT
        if not math.isfinite(deadline):
            raise Refused(ErrorCode.INVALID_ARGUMENT, f"deadline {deadline} is not a time")
        return min(deadline, now + MAX_CALL_TIME)

    @staticmethod
    def _time_left(attempts: _Attempts) -> float:
        """Seconds until the deadline; past it, the call is answered with what is known."""
        remaining = attempts.deadline - time.time()
        if remaining > 0:
            return remaining
        if attempts.abandoned is not None:
            raise Refused(ErrorCode.UNKNOWN, _unknown(attempts.abandoned))
        raise Refused(
            ErrorCode.DEADLINE_EXCEEDED, "the call's deadline passed before it could be delivered"
        )

    async def _route(
        self, request: CallRequest, attempts: _Attempts, remaining: float
    ) -> Route | None:
        """The instance for the call; None after waiting for the table to change (a standby
        about to take over, a handover under way)."""
        try:
            return await self._registry.route(request.service, request.method, request.resource_id)
        except UnknownMethodError as e:
            raise Refused(ErrorCode.NOT_FOUND, str(e)) from e
        except FailoverPendingError:
            await self._registry.wait_changed(min(remaining, _CHANGE_WAIT))
            return None
        except RoutingError as e:
            if attempts.abandoned is not None:
                # Nobody can take over: give the instance its grace to come back (twice
                # the heartbeat timeout since it was last heard of), then say so.
                grace = 2 * self._registry.table.heartbeat_timeout
                if attempts.abandoned_since and time.time() - attempts.abandoned_since < grace:
                    raise Later from e
                raise Refused(ErrorCode.UNKNOWN, _unknown(attempts.abandoned)) from e
            if attempts.delivery > 1 and remaining > RETRY_LATER:
                # A redelivered call may already have run: a caller told "unavailable,
                # retry" might retry under a new call_id. Wait for an instance instead
                # (a new leader hears heartbeats within a second).
                raise Later from e
            raise Refused(ErrorCode.UNAVAILABLE, str(e)) from e

    def _standby_route(self, request: CallRequest, attempts: _Attempts) -> Route | None:
        """A standby router's route for a call: only a first delivery, by its copy of the
        table (a call delivered again may have run: the leader reads its claim)."""
        if attempts.delivery > 1 or self._route_now is None:
            return None
        return self._route_now(request.service, request.method, request.resource_id)

    async def _abandoned(self, request: CallRequest, attempts: _Attempts) -> None:
        """For a call delivered again: note the instance that claimed it and died (or left,
        or was replaced by another process) before it recorded an outcome. The next
        instance then waits for that claim only for the grace, and the call is answered
        ``UNKNOWN`` rather than run again."""
        key = f"{request.service}.{request.method}.{request.caller}.{request.call_id}"
        holder = claim_holder(await self._claims(key))
        if holder is None:
            return  # never claimed, or its outcome is recorded: nothing was abandoned
        instance_id, session = holder
        record = self._registry.table.get(request.service, instance_id)
        if record is None:
            attempts.abandoned, attempts.abandoned_since = instance_id, 0.0
        elif record.health is Health.UNHEALTHY or (session and record.session != session):
            attempts.abandoned, attempts.abandoned_since = instance_id, record.last_heartbeat_at
        else:
            return  # its holder is alive: it answers the repeat from its run
        self._problems.log(
            logging.INFO,
            "abandoned",
            "call %s: instance %s died holding it; routing it again",
            request.call_id,
            instance_id,
            extra=_fields(request, instance_id),
        )

    async def _forward(
        self,
        request: CallRequest,
        route: Route,
        attempts: _Attempts,
        reply_to: str,
        ack: str,
        headers: dict[str, str] | None,
    ) -> bool:
        """Forward the call to the routed instance, which answers ``reply_to`` and acks on
        ``ack``; False when the instance cannot be reached (route it again)."""
        try:
            inbox = self._subjects.instance_inbox(request.service, route.instance_id, route.session)
        except ValueError:  # a record from an SDK without sessions: cannot be reached
            await self._registry.mark_unreachable(request.service, route.instance_id)
            return False
        stamp = self._stamp(ack, route, attempts.delivery, attempts.abandoned)
        forwarded = request.model_copy(update={**stamp, "deadline": attempts.deadline})
        body = self._codec.encode_envelope(forwarded)
        await self._send(inbox, body, reply_to, headers, ack, request.service, route)
        return True

    def _stamp(
        self, ack: str, route: Route, delivery: int, abandoned: str | None
    ) -> dict[str, object]:
        """The fields the router sets on every call it forwards, whatever the caller's body
        said (the caller, read off the subject, is set by the caller of this)."""
        return {
            "epoch": route.epoch,
            "delivery": delivery,
            "abandoned": abandoned,
            "direct": False,  # the instance goes by the subject; say the same here
            "ack": ack,
            "done": self._forwarded.subject,
            "ack_wait": self._ack_wait,
            "router": self._router_id,
        }

    async def _send(
        self,
        inbox: str,
        body: bytes,
        reply_to: str,
        headers: dict[str, str] | None,
        ack: str,
        service: str,
        route: Route,
    ) -> None:
        """Publish a forwarded call, noted first (the instance's report may come back
        before the publish returns)."""
        self._forwarded.note(ack, service, route.instance_id, route.session)
        await self._nc.publish(inbox, body, reply=reply_to, headers=headers)
        self._metrics.call_forwarded()


_pack = msgpack.Packer(use_bin_type=True).pack
"""Packs a forwarded call's fields (plain values: its payload is already bytes)."""


def _unknown(instance_id: str) -> str:
    return (
        f"instance {instance_id!r} failed while it held the call and no other instance could "
        "take it; whether it ran is unknown (check downstream by call_id)"
    )


def _fields(request: CallRequest, instance_id: str) -> dict[str, str]:
    """A call's structured log fields."""
    return {"call_id": request.call_id, "service": request.service, "instance": instance_id}
