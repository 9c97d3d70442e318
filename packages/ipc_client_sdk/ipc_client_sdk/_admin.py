"""Operator operations on the router, over ``<prefix>.admin.<op>`` request/reply."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import nats.errors

from ipc_client_sdk._contracts import (
    AdminOp,
    AdminReply,
    AdminRequest,
    DrainResult,
    ErrorCode,
    InstanceInfo,
    Promotion,
    RouteInfo,
    RouterStats,
    RouterStatus,
    ServiceDescription,
    ServiceInfo,
)
from ipc_client_sdk._errors import InvalidArgumentError, RemoteError, RouterUnavailableError
from ipc_client_sdk._events import (
    DEFAULT_MAX_OUTAGE,
    DEFAULT_MAX_PENDING,
    RouterEvents,
    check_event_arguments,
)
from ipc_client_sdk._link import Link
from ipc_client_sdk._nats import connection_error
from ipc_client_sdk._subjects import validate_token

ROUTER = "ipc-router"


class AdminClient:
    """Admin operations, reached as ``client.admin``. Any running router answers; the
    leading router publishes the events."""

    def __init__(self, link: Link) -> None:
        self._link = link

    async def status(self, *, timeout: float | None = None) -> RouterStatus:
        """The answering router's identity, uptime, NATS server and counts.

        Raises:
            RouterUnavailableError: no router answered within the timeout.
            IPCConnectionError: the NATS connection is gone.
        """
        result = await self.request(AdminOp.STATUS, timeout=timeout)
        status: RouterStatus = self._link.codec.validate(result, RouterStatus)
        return status

    async def services(self, *, timeout: float | None = None) -> list[ServiceInfo]:
        """Every registered service: mode, active instance, instance counts, methods.

        Raises:
            RouterUnavailableError: no router answered. RemoteError: ``UNAVAILABLE`` when
                no router leads right now.
        """
        result = await self.request(AdminOp.SERVICES, timeout=timeout)
        return [self._link.codec.validate(s, ServiceInfo) for s in result.get("services", [])]

    async def instances(
        self, service: str | None = None, *, timeout: float | None = None
    ) -> list[InstanceInfo]:
        """Registered instances (of ``service``, if given): role, health, heartbeat age,
        epoch, calls in flight, owned and queued-for resources.

        Raises:
            InvalidArgumentError: a bad service name. RemoteError: ``NOT_FOUND`` for a
                service that is not registered. RouterUnavailableError: no router answered.
        """
        args = {"service": _token(service, "service")} if service is not None else {}
        result = await self.request(AdminOp.INSTANCES, args, timeout=timeout)
        codec = self._link.codec
        return [codec.validate(i, InstanceInfo) for i in result.get("instances", [])]

    async def routes(
        self,
        service: str | None = None,
        *,
        resource: str | None = None,
        timeout: float | None = None,
    ) -> list[RouteInfo]:
        """Where resources go: claims (owner and standbys) and sticky assignments.

        Raises:
            InvalidArgumentError: a bad name. RemoteError: ``NOT_FOUND`` for a service that
                is not registered. RouterUnavailableError: no router answered.
        """
        args: dict[str, Any] = {}
        if service is not None:
            args["service"] = _token(service, "service")
        if resource is not None:
            args["resource"] = _token(resource, "resource")
        result = await self.request(AdminOp.ROUTES, args, timeout=timeout)
        return [self._link.codec.validate(r, RouteInfo) for r in result.get("routes", [])]

    async def drain(
        self,
        instance_id: str,
        *,
        service: str | None = None,
        wait: float = 30.0,
        cancel: bool = False,
        timeout: float | None = None,
    ) -> DrainResult:
        """Stop routing new calls to an instance, wait up to ``wait`` seconds for the calls
        in flight there, and hand its roles to standbys (a role with no healthy standby
        stays). It stays registered and drained until it stops or ``cancel=True``.

        Raises:
            InvalidArgumentError: a bad name or wait. RemoteError: ``NOT_FOUND`` (no such
                instance), ``INVALID_ARGUMENT`` (the id is in several services: name one).
            RouterUnavailableError: no router answered.
        """
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 300:
            raise InvalidArgumentError(f"wait must be between 0 and 300 seconds, got {wait!r}")
        args: dict[str, Any] = {
            "instance_id": _token(instance_id, "instance_id"),
            "timeout": float(wait),
            "cancel": bool(cancel),
        }
        if service is not None:
            args["service"] = _token(service, "service")
        answer = await self.request(
            AdminOp.DRAIN, args, timeout=wait + 10.0 if timeout is None else timeout
        )
        result: DrainResult = self._link.codec.validate(answer, DrainResult)
        return result

    async def promote(
        self, service: str, instance_id: str, *, drain: float = 10.0, timeout: float | None = None
    ) -> Promotion:
        """Make ``instance_id`` the active of ``service`` and of every resource it claims.

        A planned handover: the current actives get no new calls (calls for them wait), the
        router waits up to ``drain`` seconds for the calls in flight to them, then moves the
        roles (new epochs) and tells every instance concerned; the former actives stay as
        standbys. If those calls do not finish within ``drain``, nothing changes and
        ``FAILED_PRECONDITION`` says so; ``ABORTED`` if a failover moved the roles meanwhile.

        Raises:
            InvalidArgumentError: a bad name or drain time, before anything is sent.
            RemoteError: ``NOT_FOUND`` (no such instance), ``FAILED_PRECONDITION`` (it is
                unhealthy or draining, or calls did not finish within ``drain``),
                ``ABORTED`` (the roles changed meanwhile: look and retry), ``UNAVAILABLE`` (no
                router leads right now).
            RouterUnavailableError: no router answered.
        """
        _token(service, "service")
        _token(instance_id, "instance_id")
        if isinstance(drain, bool) or not isinstance(drain, int | float) or not 0 <= drain <= 300:
            raise InvalidArgumentError(f"drain must be between 0 and 300 seconds, got {drain!r}")
        args = {"service": service, "instance_id": instance_id, "drain": float(drain)}
        wait = drain + 10.0 if timeout is None else timeout
        result = await self.request(AdminOp.PROMOTE, args, timeout=wait)
        promotion: Promotion = self._link.codec.validate(result, Promotion)
        return promotion

    async def describe(
        self, service: str, method: str | None = None, *, timeout: float | None = None
    ) -> ServiceDescription:
        """The contracts ``service``'s instances registered: per method, the request and
        response JSON Schemas, durability and summary, each version with the instances
        that registered it (several versions: the instances disagree).

        Args:
            service: the service.
            method: only this method (None: every method).

        Raises:
            InvalidArgumentError: a bad name. RemoteError: ``NOT_FOUND`` for a service
                that is not registered, or a method none of its instances serves.
            RouterUnavailableError: no router answered.
        """
        args = {"service": _token(service, "service")}
        if method is not None:
            args["method"] = _token(method, "method")
        result = await self.request(AdminOp.DESCRIBE, args, timeout=timeout)
        found: list[ServiceDescription] = [
            self._link.codec.validate(s, ServiceDescription) for s in result.get("services", [])
        ]
        if not found:
            raise RemoteError(
                f"service {service!r} is not registered", code=ErrorCode.NOT_FOUND, service=ROUTER
            )
        return found[0]

    async def describe_all(self, *, timeout: float | None = None) -> list[ServiceDescription]:
        """Every registered service's contracts (see ``describe``).

        Raises:
            RouterUnavailableError: no router answered.
        """
        result = await self.request(AdminOp.DESCRIBE, {}, timeout=timeout)
        codec = self._link.codec
        return [codec.validate(s, ServiceDescription) for s in result.get("services", [])]

    async def stats(
        self, service: str | None = None, *, timeout: float | None = None
    ) -> RouterStats:
        """The leading router's call counters, per (service, method): calls, errors, rates
        (over the time it has led, and over its last 10 s window) and latency percentiles
        estimated from its histogram; the numbers its ``/metrics`` shows.

        Args:
            service: only this service's methods (None: every method counted).

        Raises:
            InvalidArgumentError: a bad name. RemoteError: ``UNAVAILABLE`` when no router
                leads. RouterUnavailableError: no router answered.
        """
        args = {} if service is None else {"service": _token(service, "service")}
        result = await self.request(AdminOp.STATS, args, timeout=timeout)
        stats: RouterStats = self._link.codec.validate(result, RouterStats)
        return stats

    def events(
        self,
        kinds: Iterable[str] | None = None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_outage: float | None = DEFAULT_MAX_OUTAGE,
    ) -> RouterEvents:
        """The leading router's events as they happen: role, health and registry changes.

        ``async with client.admin.events(kinds={"role"}) as events: async for event in
        events: ...`` (live once inside ``async with``), or simply ``async for event in
        client.admin.events(): ...``. Events are not stored: those published before the
        stream is live, or while the connection is down, are not seen.

        Args:
            kinds: the kinds to receive (``EventKind`` values: ``role``, ``health``,
                ``registry``); None for every kind.
            max_pending: events held for a consumer that falls behind; beyond that new
                events are dropped (``RouterEvents.dropped`` counts them, and a warning is
                logged).
            max_outage: seconds the connection may be down (events missed meanwhile are
                lost) before iterating raises ``IPCConnectionError``; None rides out every
                outage.

        Raises:
            InvalidArgumentError: an unknown kind, or a bad bound, before anything is sent.
        """
        chosen = check_event_arguments(kinds, max_pending, max_outage)
        return RouterEvents(self._link, chosen, max_pending=max_pending, max_outage=max_outage)

    async def request(
        self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send admin operation ``op`` and return its result.

        Raises:
            RouterUnavailableError: nobody answers on the admin subject, or not in time.
            RemoteError: the router refused or failed the operation (``code`` says how).
            CodecError: the answer could not be decoded.
            IPCConnectionError: the NATS connection is gone.
        """
        subject = self._link.subjects.admin(op)
        return await request_op(self._link, subject, op, args, timeout=timeout)


def _token(value: str, what: str) -> str:
    try:
        return validate_token(value, what)
    except ValueError as e:
        raise InvalidArgumentError(str(e)) from e


async def request_op(
    link: Link,
    subject: str,
    op: str,
    args: dict[str, Any] | None,
    *,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Send an ``AdminRequest`` on ``subject`` to the routers and return the result.

    The admin operations and the instance control operations (register, deregister) share
    this request/reply shape.

    Raises:
        RouterUnavailableError: nobody answers on the subject, or not in time.
        RemoteError: the router refused or failed the operation (``code`` says how).
        PermissionDeniedError: NATS does not let this identity send on ``subject``.
        CodecError: the answer could not be decoded.
        IPCConnectionError: the NATS connection is gone.
    """
    timeout = link.request_timeout if timeout is None else timeout
    data = link.codec.encode_envelope(AdminRequest(op=op, args=args or {}))
    try:
        msg = await link.replies.request(subject, data, timeout=timeout)
    except nats.errors.NoRespondersError as e:
        raise RouterUnavailableError(
            f"no router is running (nobody answers on {subject})", service=ROUTER
        ) from e
    except nats.errors.TimeoutError as e:
        raise RouterUnavailableError(
            f"no router answered {subject} within {timeout:g}s", service=ROUTER
        ) from e
    except nats.errors.Error as e:
        raise connection_error(link.servers, e) from e
    reply = link.codec.decode_envelope(msg.data, AdminReply)
    if not reply.ok:
        info = reply.error
        if info is None:
            raise RemoteError(
                "the router failed without saying why", code=ErrorCode.UNKNOWN, service=ROUTER
            )
        raise RemoteError.from_info(info, service=ROUTER)
    return reply.result or {}
