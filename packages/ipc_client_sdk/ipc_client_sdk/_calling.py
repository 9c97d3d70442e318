"""The caller's side of an RPC: ``client.call(...)``.

A call is published into the calls stream on a subject that ends with the caller's name
(``<prefix>.call.<service>.<method>.<caller>``: NATS lets an identity publish as itself
only), with ``Nats-Msg-Id`` set to ``<caller>.<call_id>``, so a publish the SDK repeats
(after a publish timeout) is stored once and two callers' equal call_ids are two calls. The
router takes it from the stream, routes it, and relays the instance's reply to this client's
reply inbox: one wildcard subscription per client, one token per call attempt. A "no
responders" status arriving on that subject is not an answer: the wait goes on until the
answer or the deadline.

The envelopes of a call are the ``CallRequest`` and ``CallReply`` contracts, written and read
as plain maps on the hot path (``_call_envelopes``; a reply of any other shape goes through
the model).

A call_id the stream has already seen inside its de-duplication window (the caller retried
with its own call_id) is accepted again under a fresh message id: executing it twice is
what the serving side prevents, by answering a repeat from its record of the first run.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import PubAck

from ipc_client_sdk._call_envelopes import Outgoing, plain_answer, validated_reply
from ipc_client_sdk._codec import check_type
from ipc_client_sdk._contracts import (
    MSG_ID_HEADER,
    REFUSED_HEADER,
    REPLY_TO_HEADER,
    CallReply,
    ErrorCode,
)
from ipc_client_sdk._errors import (
    CallTimeoutError,
    ClientStateError,
    InvalidArgumentError,
    IPCError,
    PermissionDeniedError,
    RemoteError,
    RouterUnavailableError,
    ServiceUnavailableError,
    StoreFullError,
)
from ipc_client_sdk._link import Link
from ipc_client_sdk._metrics import outcome_of
from ipc_client_sdk._nats import connection_error
from ipc_client_sdk._replies import (
    STORE_FULL_DETAIL,
    message_too_large,
    store_is_full,
    stream_publish,
)
from ipc_client_sdk._routes import RouteCache, Target
from ipc_client_sdk._subjects import new_call_id, validate_call_id, validate_token
from ipc_client_sdk._tracing import Traced, sending_call

ANONYMOUS_CALLER = "anonymous"
"""The caller token of a client without a name (an unsecured deployment's scripts)."""

_PUBLISH_ATTEMPT_TIMEOUT = 2.0
"""Seconds one publish attempt waits for JetStream's ack before it is repeated."""

_CACHE_WAIT = 1.0
"""Seconds a client's first call waits for the routing cache's first load; without it a
call goes through the router."""

_NO_STREAM_GRACE = 1.0
"""Seconds to keep trying while no stream answers (a leader election) before giving up."""


_SUBJECTS_KEPT = 1024
"""Call subjects a client remembers (one per target it calls)."""


class _Path:
    """Which path a call took, for its metrics: direct until it falls back to the router."""

    __slots__ = ("direct",)

    def __init__(self) -> None:
        self.direct = False


@functools.lru_cache(maxsize=1024)
def _split_target(target: str) -> tuple[str, str]:
    service, dot, method = target.partition(".")
    try:
        if not dot:
            raise ValueError("expected 'service.method'")
        validate_token(service, "service")
        validate_token(method, "method")
    except ValueError as e:
        raise InvalidArgumentError(f"bad call target {target!r}: {e}") from e
    return service, method


def parse_target(target: str) -> tuple[str, str]:
    """Split ``"service.method"``.

    Raises:
        InvalidArgumentError: not two valid tokens joined by one dot.
    """
    if not isinstance(target, str):
        raise InvalidArgumentError(f"call target must be 'service.method', got {target!r}")
    return _split_target(target)


@functools.lru_cache(maxsize=4096)
def _valid_resource(resource_id: str) -> str:
    return validate_token(resource_id, "resource_id")


def _check_resource(resource_id: object) -> None:
    """``validate_token(resource_id, "resource_id")``, remembered for the resource ids seen
    last (a caller calls about the same accounts over and over).

    Raises:
        ValueError: not a valid resource id.
    """
    if type(resource_id) is str:
        _valid_resource(resource_id)
    else:
        validate_token(resource_id, "resource_id")  # type: ignore[arg-type]  # raises


class Caller:
    """Sends calls and matches their replies; one per client."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._route_cache: RouteCache | None = None
        self._checked_caller: str | None = None
        self._call_subjects: dict[tuple[str, str, str], str] = {}

    async def call(
        self,
        target: str,
        payload: Any,
        *,
        resource_id: str | None,
        timeout: float | None,
        returns: Any,
        call_id: str | None,
        durable: bool | None = None,
    ) -> Any:
        """See ``IPCClient.call``; counted in the client's metrics."""
        service, method = parse_target(target)
        metrics = self._link.metrics
        path = _Path()
        if not metrics.counting:
            return await self._call(
                service, method, payload, resource_id, timeout, returns, call_id, durable, path
            )
        started = time.perf_counter()
        try:
            result = await self._call(
                service, method, payload, resource_id, timeout, returns, call_id, durable, path
            )
        except BaseException as e:
            seconds = time.perf_counter() - started
            metrics.call_done(service, method, path.direct, outcome_of(e), seconds)
            raise
        seconds = time.perf_counter() - started
        metrics.call_done(service, method, path.direct, "ok", seconds)
        return result

    async def _call(
        self,
        service: str,
        method: str,
        payload: Any,
        resource_id: str | None,
        timeout: float | None,
        returns: Any,
        call_id: str | None,
        durable: bool | None,
        path: _Path,
    ) -> Any:
        link = self._link
        link.nats  # noqa: B018  # raises ClientStateError unless the client is open
        timeout = link.request_timeout if timeout is None else timeout
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise InvalidArgumentError(f"timeout must be a positive number, got {timeout!r}")
        if durable is not None and not isinstance(durable, bool):
            raise InvalidArgumentError(f"durable must be True, False or None, got {durable!r}")
        if durable is False and call_id is not None:
            raise InvalidArgumentError(
                "a call_id makes a call exactly once, which needs the durable path: pass "
                "durable=True (or no call_id for a direct, at-most-once call)",
                service=service,
            )
        try:
            if returns is not None:
                check_type(returns)
            if resource_id is not None:
                _check_resource(resource_id)
            if call_id is not None:
                validate_call_id(call_id)
            caller = self._caller()
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(str(e), service=service) from e
        may_go_direct = durable is not True and call_id is None
        call_id = call_id or new_call_id()
        deadline = time.time() + timeout
        call = Outgoing(
            call_id, service, method, link.codec.encode(payload), resource_id, deadline, caller
        )
        with sending_call(service, method, call_id, resource_id) as traced:
            return await self._dispatch(
                call,
                may_go_direct=may_go_direct,
                durable=durable,
                timeout=timeout,
                returns=returns,
                traced=traced,
                path=path,
            )

    def _caller(self) -> str:
        """This client's caller token (its name), checked once.

        Raises:
            ValueError: the name cannot be a subject token.
        """
        name = self._link.name or ANONYMOUS_CALLER
        if name != self._checked_caller:
            validate_token(name, "the client's name (caller)")
            self._checked_caller = name
        return name

    async def _dispatch(
        self,
        call: Outgoing,
        *,
        may_go_direct: bool,
        durable: bool | None,
        timeout: float,
        returns: Any,
        traced: Traced | None,
        path: _Path,
    ) -> Any:
        """Send the call (direct when it may and the cache finds the instance, else
        durably) and return its result."""
        link = self._link
        service, call_id = call.service, call.call_id
        trace_headers = traced.headers if traced is not None else None
        if may_go_direct:
            routes = self._routes
            direct = (routes.is_ready or await routes.ready(min(timeout / 2, _CACHE_WAIT))) and (
                durable is False or routes.direct_by_default(service, call.method)
            )
            found = routes.lookup(service, call.method, call.resource_id) if direct else None
            if found is not None:
                path.direct = True
                if traced is not None:
                    traced.set("ipc.path", "direct")
                    traced.set("ipc.instance_id", found.instance_id)
                raw = await self._call_direct(found, call, timeout, trace_headers)
                if raw is not None:
                    return self._result(raw, call_id, service, returns)
                path.direct = False
                # Refused unrun, or nobody there: the router routes it, exactly once.
        replies = link.replies
        try:
            # A "no responders" status on the reply subject is not the answer: the router
            # may forward the call with this subject as its NATS reply, and an instance
            # that is gone then makes nats-server send the status here while JetStream
            # redelivers the call to be routed again.
            reply_to, future = await replies.expect(ignore_no_responders=True)
        except nats.errors.Error as e:
            raise connection_error(link.servers, e) from e
        token = reply_to.rsplit(".", 1)[-1]
        subject = self._call_subject(service, call.method, call.caller)
        if traced is not None:
            traced.set("ipc.path", "durable")
            traced.set("messaging.destination.name", subject)
        try:
            await self._publish(subject, call, reply_to, token, trace_headers)
            try:
                answer = await replies.wait(future, call.deadline - time.time())
            except nats.errors.TimeoutError:
                raise CallTimeoutError(
                    f"no answer within {timeout:g}s", call_id=call_id, service=service
                ) from None
        finally:
            replies.forget(reply_to)
        return self._result(answer.data, call_id, service, returns)

    async def _publish(
        self,
        subject: str,
        call: Outgoing,
        reply_to: str,
        token: str,
        trace_headers: dict[str, str] | None = None,
    ) -> None:
        """Publish into the calls stream until it acks.

        An earlier call with this call_id may be (or have been) in the stream, answering
        another reply address: then this attempt is accepted too, under a fresh message id
        (the serving side runs the handler at most once per caller and call_id).
        """
        msg_id = f"{call.caller}.{call.call_id}"
        headers = dict(trace_headers) if trace_headers else {}
        headers[REPLY_TO_HEADER] = reply_to
        await publish_acked(
            self._link,
            subject,
            self._link.codec.encode_fields(call.envelope(reply_to=reply_to)),
            msg_id=msg_id,
            deadline=call.deadline,
            headers=headers,
            what="the call",
            call_id=call.call_id,
            service=call.service,
            fresh_id=f"{msg_id}.{token}",
        )

    def _call_subject(self, service: str, method: str, caller: str) -> str:
        """``Subjects.call``, remembered for the targets called last."""
        key = (service, method, caller)
        subject = self._call_subjects.get(key)
        if subject is None:
            if len(self._call_subjects) >= _SUBJECTS_KEPT:
                self._call_subjects.clear()
            subject = self._call_subjects[key] = self._link.subjects.call(*key)
        return subject

    @property
    def _routes(self) -> RouteCache:
        if self._route_cache is None:
            self._route_cache = RouteCache(self._link)
        return self._route_cache

    async def _call_direct(
        self,
        target: Target,
        call: Outgoing,
        timeout: float,
        trace_headers: dict[str, str] | None = None,
    ) -> bytes | None:
        """Send a call straight to the instance the cache names (at most once); its reply,
        or None when it was not run there (refused unrun, or nobody listens)."""
        link = self._link
        service, call_id = target.service, call.call_id
        inbox = target.inbox or link.subjects.instance_direct(
            service, target.instance_id, target.session
        )
        envelope = call.envelope(epoch=target.epoch, direct=True)
        try:
            msg = await link.replies.request(
                inbox,
                link.codec.encode_fields(envelope),
                timeout=call.deadline - time.time(),
                headers=trace_headers,
            )
        except nats.errors.NoRespondersError:
            return None  # the process is gone: the router knows what to do
        except nats.errors.TimeoutError:
            raise CallTimeoutError(
                f"no answer within {timeout:g}s from instance {target.instance_id} (a direct "
                "call is at most once: it may or may not have run)",
                call_id=call_id,
                service=service,
                instance=target.instance_id,
            ) from None
        except nats.errors.Error as e:
            if isinstance(e, nats.errors.ConnectionClosedError) and link.closing:
                raise ClientStateError("the client closed during the call") from e
            raise connection_error(link.servers, e) from e
        if msg.headers and msg.headers.get(REFUSED_HEADER):
            return None
        return msg.data

    async def close(self) -> None:
        """Stop the routing cache."""
        if self._route_cache is not None:
            await self._route_cache.close()

    def _result(self, raw: bytes, call_id: str, service: str, returns: Any) -> Any:
        codec = self._link.codec
        fields = codec.envelope_fields(raw, CallReply)
        # An answer of the plain shape is read as it is; anything else (an error, a value
        # of another type) goes through the model, with its checks and its messages.
        reply = None if plain_answer(fields) else validated_reply(fields)
        reply_id = fields["call_id"] if reply is None else reply.call_id
        if reply_id != call_id:
            # Only this call's answer counts: a reply naming another call (forged, or sent
            # to this inbox by mistake) is never taken for this call's result.
            raise RemoteError(
                f"the reply names another call ({reply_id[:128]!r}); not taken",
                code=ErrorCode.INTERNAL,
                call_id=call_id,
                service=service,
            )
        if reply is None:
            payload, instance = fields.get("payload"), fields.get("instance")
        elif reply.error is not None:
            raise error_from_reply(reply, call_id, service)
        else:
            payload, instance = reply.payload, reply.instance
        if payload is None:
            return None
        try:
            return codec.decode(payload, returns)
        except IPCError as e:
            e.call_id, e.service, e.instance = call_id, service, instance
            raise


async def publish_acked(
    link: Link,
    subject: str,
    data: bytes,
    *,
    msg_id: str,
    deadline: float,
    what: str,
    headers: dict[str, str] | None = None,
    call_id: str | None = None,
    service: str | None = None,
    fresh_id: str | None = None,
) -> PubAck:
    """Publish into a stream until JetStream acks, repeating an attempt whose ack timed out
    under the same ``Nats-Msg-Id`` (so it is stored once).

    With ``fresh_id``, a first attempt that JetStream reports as a duplicate is published
    again under ``fresh_id``; without it, a duplicate is success (already stored).

    Raises:
        CallTimeoutError: no ack before ``deadline`` (it may have been stored).
        RouterUnavailableError: no stream captures ``subject`` (no router set it up).
        PermissionDeniedError: NATS does not let this identity publish on ``subject``.
        StoreFullError: the stream (or the whole store) is full: nothing was stored.
        InvalidArgumentError: the message is over the stream's largest message.
        ServiceUnavailableError: the stream refused the message for another reason.
        IPCConnectionError, ClientStateError: the connection failed or the client closed.
    """
    first = True
    no_stream_since: float | None = None
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise CallTimeoutError(
                f"JetStream did not confirm {what} before its deadline (it may still have been "
                "stored: retry with the same id to be safe)",
                call_id=call_id,
                service=service,
            )
        try:
            ack = await stream_publish(
                link.replies,
                subject,
                data,
                timeout=min(remaining, _PUBLISH_ATTEMPT_TIMEOUT),
                headers={**(headers or {}), MSG_ID_HEADER: msg_id},
            )
        except nats.js.errors.NoStreamResponseError as e:
            now = time.monotonic()
            no_stream_since = no_stream_since or now
            if now - no_stream_since >= _NO_STREAM_GRACE:
                raise RouterUnavailableError(
                    f"nothing accepts messages on {subject}: no router has set up this "
                    f"deployment (prefix {link.subjects.prefix!r}) on this NATS",
                    call_id=call_id,
                    service=service,
                ) from e
            await asyncio.sleep(0.1)
            continue
        except nats.errors.TimeoutError:
            first = False  # it may have been stored: repeat under the same id
            continue
        except nats.js.errors.APIError as e:
            raise refusal_error(e, what, call_id=call_id, service=service) from e
        except PermissionDeniedError as e:
            e.call_id, e.service = call_id, service
            raise
        except nats.errors.Error as e:
            if isinstance(e, nats.errors.ConnectionClosedError) and link.closing:
                raise ClientStateError(f"the client closed while sending {what}") from e
            raise connection_error(link.servers, e) from e
        if ack.duplicate and first and fresh_id is not None:
            msg_id, first = fresh_id, False
            continue
        return ack


def refusal_error(
    error: nats.js.errors.APIError, what: str, *, call_id: str | None, service: str | None
) -> IPCError:
    """The exception for a message JetStream refused (nothing was stored)."""
    stream = error.stream or "the stream"
    reason = error.description or str(error)
    if store_is_full(error):
        return StoreFullError(
            f"{stream} is full ({reason}): {what} was refused and not stored; retry later",
            store=error.stream,
            call_id=call_id,
            service=service,
        )
    if message_too_large(error):
        return InvalidArgumentError(
            f"{stream} refused {what}: it is larger than the largest message it stores",
            call_id=call_id,
            service=service,
        )
    return ServiceUnavailableError(
        f"{stream} refused {what}: {reason}", call_id=call_id, service=service
    )


def error_from_reply(reply: CallReply, call_id: str, service: str) -> IPCError:
    """The exception a caller sees for an error reply."""
    info = reply.error
    assert info is not None
    context: dict[str, Any] = {
        "code": info.code,
        "call_id": call_id,
        "service": reply.service or service,
        "instance": reply.instance,
        "details": info.details,
        "retryable": info.retryable,
    }
    if info.code is ErrorCode.UNAVAILABLE:
        full = info.details.get(STORE_FULL_DETAIL)
        if isinstance(full, str):
            return StoreFullError(info.message, store=full, **context)
        return ServiceUnavailableError(info.message, **context)
    if info.code is ErrorCode.DEADLINE_EXCEEDED:
        return CallTimeoutError(info.message, **context)
    return RemoteError(info.message, **context)
