"""Relaying one call: route it, deliver it to the instance's inbox, and route it again
while that is what the situation asks for (steps 2 to 4 in ``api/calls.py``).

``CallRelay.relay`` runs named steps in a loop until one gives the instance's answer or a
terminal error: ``_check`` and ``_deadline`` once, then ``_time_left``, ``_route`` and
``_deliver`` per attempt. What the attempts learnt (an instance that failed while it held
the call, how many instances did not listen, how many refused the call) is kept in one
``_Attempts``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg

from ipc_client_sdk.protocol import (
    REFUSED_HEADER,
    CallRequest,
    Codec,
    ErrorCode,
    RateLimitedLog,
    ReplyInbox,
    Subjects,
    Traced,
    clip,
    continue_routed,
    failed,
    validate_call_id,
    validate_token,
)
from ipc_router.application.inflight import InflightTracker
from ipc_router.application.ports import NoRouterMetrics, RouterMetrics
from ipc_router.application.registry import InstanceRegistry
from ipc_router.domain import FailoverPendingError, Route, RoutingError, UnknownMethodError

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

_ROUTE_ATTEMPTS = 3
"""Instances tried for one delivery when the chosen one is not listening."""

_CHANGE_WAIT = 0.25
"""The longest one wait for the routing table to change (a failover, a handover)."""

Awaiting = dict[asyncio.Future[Msg], tuple[str, str, str]]
"""The calls waiting on an instance's answer: future -> (service, instance_id, session)."""


class Later(Exception):
    """The call cannot be routed yet: leave it for redelivery (nak with a delay)."""


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
    abandoned_at: float = 0.0
    """When it did (monotonic)."""
    unreachable: int = 0
    """Instances that were not listening on their inbox."""
    refusals: int = 0
    """Instances that refused the call unrun (fenced, or routed under an old epoch)."""


class CallRelay:
    """Routes a call and relays it to its instance until it is answered.

    Args:
        subjects: the subject map.
        codec: the envelope codec.
        registry: routing decisions and instance health.
        tracker: counts the calls in flight to each instance (for handovers).
        replies: the inbox the instances answer on.
        awaiting: the calls waiting on an instance, shared with the consumer's watchdog,
            which cancels a wait whose instance failed.
        in_term: whether this router's leadership term still runs (asked before each
            delivery to an instance).
        metrics: counts redeliveries.
    """

    def __init__(
        self,
        subjects: Subjects,
        codec: Codec,
        registry: InstanceRegistry,
        tracker: InflightTracker,
        replies: ReplyInbox,
        awaiting: Awaiting,
        in_term: Callable[[], bool] = lambda: True,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self._in_term = in_term
        self._metrics = metrics or NoRouterMetrics()
        self._subjects = subjects
        self._codec = codec
        self._registry = registry
        self._tracker = tracker
        self._replies = replies
        self._awaiting = awaiting
        self._problems = CALL_PROBLEMS

    async def relay(self, msg: Msg, request: CallRequest) -> bytes:
        """Route the call and return the instance's reply bytes.

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
                return await self._relay(msg, request, traced)
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

    async def _relay(self, msg: Msg, request: CallRequest, traced: Traced | None) -> bytes:
        """``relay``'s steps, in its span."""
        request = self._check(msg, request)
        attempts = _Attempts(self._deadline(request), msg.metadata.num_delivered)
        headers = traced.headers if traced is not None else None
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
        while True:
            remaining = self._time_left(attempts)
            route = await self._route(request, attempts, remaining)
            if route is None:
                continue  # waited for the table to change
            if not self._in_term():
                raise OutOfTerm
            if traced is not None:
                traced.set("ipc.instance_id", route.instance_id)
            answer = await self._deliver(request, route, attempts, remaining, headers)
            if answer is not None:
                return answer

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
        about to take over, a handover under way, a failed holder's grace)."""
        try:
            return await self._registry.route(request.service, request.method, request.resource_id)
        except UnknownMethodError as e:
            raise Refused(ErrorCode.NOT_FOUND, str(e)) from e
        except FailoverPendingError:
            await self._registry.wait_changed(min(remaining, _CHANGE_WAIT))
            return None
        except RoutingError as e:
            if attempts.abandoned is not None:
                # Nobody can take over: give the instance its grace to come back.
                grace = self._registry.table.heartbeat_timeout
                if time.monotonic() - attempts.abandoned_at < grace:
                    await self._registry.wait_changed(min(remaining, _CHANGE_WAIT))
                    return None
                raise Refused(ErrorCode.UNKNOWN, _unknown(attempts.abandoned)) from e
            if attempts.delivery > 1 and remaining > RETRY_LATER:
                # A redelivered call may already have run: a caller told "unavailable,
                # retry" might retry under a new call_id. Wait for an instance instead
                # (a new leader hears heartbeats within a second).
                raise Later from e
            raise Refused(ErrorCode.UNAVAILABLE, str(e)) from e

    async def _deliver(
        self,
        request: CallRequest,
        route: Route,
        attempts: _Attempts,
        remaining: float,
        headers: dict[str, str] | None = None,
    ) -> bytes | None:
        """Send the call to the routed instance; its answer, or None to route it again."""
        forwarded = request.model_copy(
            update={
                "epoch": route.epoch,
                "delivery": attempts.delivery,
                "deadline": attempts.deadline,
                "abandoned": attempts.abandoned,
                "direct": False,  # the instance goes by the subject; say the same here
            }
        )
        try:
            inbox = self._subjects.instance_inbox(request.service, route.instance_id, route.session)
        except ValueError:  # a record from an SDK without sessions: cannot be reached
            await self._registry.mark_unreachable(request.service, route.instance_id)
            return None
        answer = await self._send(request, route, attempts, inbox, forwarded, remaining, headers)
        if answer is None or await self._refused_unrun(request, route, attempts, answer, remaining):
            return None
        return answer.data

    async def _send(
        self,
        request: CallRequest,
        route: Route,
        attempts: _Attempts,
        inbox: str,
        forwarded: CallRequest,
        remaining: float,
        headers: dict[str, str] | None = None,
    ) -> Msg | None:
        """One request to the instance's inbox, counted in flight while it waits; None when
        the instance failed while it held the call or was not listening."""
        self._tracker.add(request.service, route.instance_id)
        try:
            return await self._replies.request(
                inbox,
                self._codec.encode_envelope(forwarded),
                timeout=remaining,
                headers=headers,
                pending=self._awaiting,
                tag=(request.service, route.instance_id, route.session),
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the router is stopping: leave the call for redelivery
            # The watchdog saw the instance fail while it held the call: route it again
            # (see CallConsumer._watch_instances). Whoever gets it must not run it if the
            # failed instance had started it, so it is told which instance that was.
            attempts.abandoned, attempts.abandoned_at = route.instance_id, time.monotonic()
            self._problems.log(
                logging.INFO,
                "abandoned",
                "call %s: instance %s failed while holding it; routing it again",
                request.call_id,
                route.instance_id,
                extra=_fields(request, route.instance_id),
            )
            return None
        except nats.errors.NoRespondersError:
            await self._not_listening(request, route, attempts)
            return None
        except nats.errors.TimeoutError as e:
            raise Refused(
                ErrorCode.DEADLINE_EXCEEDED,
                f"instance {route.instance_id!r} did not answer before the deadline",
            ) from e
        finally:
            self._tracker.done(request.service, route.instance_id)

    async def _not_listening(self, request: CallRequest, route: Route, attempts: _Attempts) -> None:
        """Mark an instance that did not take the call unhealthy; give up after a few."""
        await self._registry.mark_unreachable(request.service, route.instance_id)
        attempts.unreachable += 1
        if attempts.unreachable >= _ROUTE_ATTEMPTS:
            raise Refused(
                ErrorCode.UNAVAILABLE,
                f"no instance of {request.service!r} took the call after {_ROUTE_ATTEMPTS} tries",
            ) from None

    async def _refused_unrun(
        self, request: CallRequest, route: Route, attempts: _Attempts, answer: Msg, remaining: float
    ) -> bool:
        """Whether the instance refused the call without running it (fenced: its lease ran
        out, or routed before its roles changed); then wait, with a growing backoff, for
        the table (or the lease) to move on."""
        refused = (answer.headers or {}).get(REFUSED_HEADER)
        if not refused:
            return False
        attempts.refusals += 1
        self._problems.log(
            logging.DEBUG,
            "refused",
            "call %s refused by %s (%s)",
            request.call_id,
            route.instance_id,
            clip(refused),
            extra=_fields(request, route.instance_id),
        )
        backoff = 0.02 * 2 ** min(attempts.refusals, 5)
        await self._registry.wait_changed(min(remaining, backoff))
        return True


def _unknown(instance_id: str) -> str:
    return (
        f"instance {instance_id!r} failed while it held the call and no other instance could "
        "take it; whether it ran is unknown (check downstream by call_id)"
    )


def _fields(request: CallRequest, instance_id: str) -> dict[str, str]:
    """A call's structured log fields."""
    return {"call_id": request.call_id, "service": request.service, "instance": instance_id}
