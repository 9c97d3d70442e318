"""Request/reply operation endpoints: ``<prefix>.admin.<op>`` for operators, and the
instance control operations (``<prefix>.ctl.<op>``) built on the same endpoint.

Each handler decodes an ``AdminRequest``, calls the application layer, and answers with an
``AdminReply``. A bad request gets an error reply, never a crash: the subscription keeps
serving. The application's and the domain's errors become error codes in one table here
(``_CODES``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ipc_client_sdk import CodecError, IPCError
from ipc_client_sdk.protocol import (
    PROTOCOL_VERSION,
    AdminOp,
    AdminReply,
    AdminRequest,
    Codec,
    ContractVersion,
    ErrorCode,
    ErrorInfo,
    MethodDescription,
    NatsServerInfo,
    RateLimitedLog,
    RouterStatus,
    ServiceDescription,
    Subjects,
    clip,
    validate_token,
)
from ipc_router.application.contracts import DescribeContracts, ServiceContracts
from ipc_router.application.errors import (
    DrainTimeoutError,
    HandoverBusyError,
    InstanceReplacedError,
    RolesChangedError,
    SessionRequiredError,
    StoreUnavailableError,
)
from ipc_router.application.status import GetRouterStatus, StatusReport
from ipc_router.domain import (
    InstanceConflictError,
    NoHealthyInstanceError,
    UnknownInstanceError,
    UnknownMethodError,
    UnknownServiceError,
)

_log = logging.getLogger("ipc_router.admin")

OpHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""One operation: the request's ``args`` in, the reply's ``result`` out."""

_CODES: dict[type[Exception], ErrorCode] = {
    StoreUnavailableError: ErrorCode.UNAVAILABLE,
    InstanceConflictError: ErrorCode.ALREADY_EXISTS,
    UnknownInstanceError: ErrorCode.NOT_FOUND,
    NoHealthyInstanceError: ErrorCode.FAILED_PRECONDITION,
    HandoverBusyError: ErrorCode.ABORTED,
    RolesChangedError: ErrorCode.ABORTED,
    DrainTimeoutError: ErrorCode.FAILED_PRECONDITION,
    InstanceReplacedError: ErrorCode.FAILED_PRECONDITION,
    SessionRequiredError: ErrorCode.PERMISSION_DENIED,
    UnknownServiceError: ErrorCode.NOT_FOUND,
    UnknownMethodError: ErrorCode.NOT_FOUND,
}
"""The error code an operation's failure is answered with (the nearest class counts)."""

ADMIN_QUEUE = "ipc-router-admin"
"""Queue group of the admin subscription: one router answers each admin request."""


def status_to_wire(report: StatusReport) -> RouterStatus:
    """Translate the application's report into the wire contract."""
    broker = report.broker
    return RouterStatus(
        router_id=report.identity.router_id,
        version=report.identity.version,
        protocol_version=PROTOCOL_VERSION,
        subject_prefix=report.identity.subject_prefix,
        started_at=datetime.fromtimestamp(report.identity.started_at, UTC),
        uptime_s=round(report.uptime_s, 3),
        nats=NatsServerInfo(
            server_id=broker.server_id,
            server_name=broker.server_name,
            version=broker.version,
            cluster=broker.cluster,
            connected_url=broker.connected_url,
            jetstream=broker.jetstream,
            embedded=broker.embedded,
        ),
        services=report.counts.services,
        instances=report.counts.instances,
        leader=report.leading,
    )


def contracts_to_wire(found: ServiceContracts) -> ServiceDescription:
    """Translate one service's contracts into the wire contract."""
    return ServiceDescription(
        service=found.service,
        methods=[
            MethodDescription(
                method=m.method,
                versions=[
                    ContractVersion.model_validate(
                        {**g.contract, "version": g.version, "instances": g.instances}
                    )
                    for g in m.versions
                ],
            )
            for m in found.methods
        ],
        without_contracts=found.without_contracts,
    )


def describe_op(nc: NATS, codec: Codec, describe: DescribeContracts) -> OpHandler:
    """The ``describe`` operation (``service``, ``method``: both optional), answered by
    this router from the stores. An answer too large for one NATS message is refused
    (``RESOURCE_EXHAUSTED``) rather than lost: the operator narrows it."""

    async def answer(args: dict[str, Any]) -> dict[str, Any]:
        names = {}
        for what in ("service", "method"):
            value = args.get(what)
            if value is not None:
                try:
                    names[what] = validate_token(str(value), what)
                except ValueError as e:
                    raise IPCError(str(e), code=ErrorCode.INVALID_ARGUMENT) from e
        found = await describe(names.get("service"), names.get("method"))
        result = {"services": [contracts_to_wire(s).model_dump(mode="python") for s in found]}
        size = len(codec.encode(result))
        if size > nc.max_payload - 4096:
            raise IPCError(
                f"the contracts take {size} bytes, more than one NATS message holds "
                f"({nc.max_payload}); describe one service, or one method",
                code=ErrorCode.RESOURCE_EXHAUSTED,
            )
        return result

    return answer


class OpsEndpoint:
    """Request/reply operations on ``<subject>.<op>``, answered by one router of a queue group.

    Each request is an ``AdminRequest``; each answer an ``AdminReply``. Any failure of an
    operation becomes an error reply, so the subscription keeps serving.

    An operation in ``scoped`` may also arrive as ``<subject>.<op>.<service>``: NATS
    permissions let a service's identity publish such subjects for its own service only, so
    a request whose ``service`` argument is another is refused ``PERMISSION_DENIED``.

    Args:
        nc: the connection.
        subject: the wildcard subject (``<prefix>.admin.*``).
        queue: the queue group, so one router answers each request.
        codec: the envelope codec.
        ops: operation name -> handler taking the request's ``args``.
    """

    def __init__(
        self,
        nc: NATS,
        subject: str,
        queue: str,
        codec: Codec,
        ops: dict[str, OpHandler],
        *,
        scoped: frozenset[str] = frozenset(),
    ) -> None:
        self._nc = nc
        self._subject = subject
        self._base = len(subject.rsplit(".", 1)[0]) + 1
        self._scoped = scoped
        self._queue = queue
        self._codec = codec
        self._ops = ops
        self._sub: Subscription | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._problems = RateLimitedLog(_log)  # what requesters cause: a flood costs few lines

    async def start(self) -> None:
        """Subscribe to every operation's subject."""
        self._sub = await self._nc.subscribe(self._subject, queue=self._queue, cb=self._on_request)

    async def stop(self, *, grace: float = 2.0) -> None:
        """Stop answering; requests already taken get ``grace`` seconds to be answered."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        # Each request in its own task: one that waits (a drain) must not hold up the rest.
        task = asyncio.create_task(self._answer(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, msg: Msg) -> None:
        op, _, scope = msg.subject[self._base :].partition(".")
        try:
            reply = await self._handle(op, msg.data, scope or None)
        except Exception as e:  # the endpoint must outlive any handler bug
            self._problems.exception("failed", "operation %s failed", clip(op))
            reply = _error(ErrorCode.INTERNAL, f"operation {op} failed: {type(e).__name__}")
        if not msg.reply:
            self._problems.warning(
                "no-reply-address",
                "operation %s arrived without a reply address; dropped",
                clip(op),
            )
            return
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(msg.reply, self._codec.encode_envelope(reply))

    async def _handle(self, op: str, data: bytes, scope: str | None) -> AdminReply:
        try:
            request = self._codec.decode_envelope(data, AdminRequest)
        except CodecError as e:
            return _error(e.code, e.message)
        handler = self._ops.get(op)
        if handler is None or request.op != op or (scope and op not in self._scoped):
            known = ", ".join(sorted(self._ops))
            return _error(ErrorCode.NOT_FOUND, f"unknown operation {op!r} (known: {known})")
        if scope is not None and request.args.get("service") != scope:
            return _error(
                ErrorCode.PERMISSION_DENIED,
                f"{op} on the subject of service {clip(scope)!r} must name that service",
            )
        try:
            return AdminReply(ok=True, result=await handler(request.args))
        except IPCError as e:
            return AdminReply(ok=False, error=e.to_info())
        except tuple(_CODES) as e:
            code = next(_CODES[c] for c in type(e).__mro__ if c in _CODES)
            return _error(code, str(e))


def admin_endpoint(
    nc: NATS,
    subjects: Subjects,
    codec: Codec,
    get_status: GetRouterStatus,
    describe: DescribeContracts | None = None,
) -> OpsEndpoint:
    """The operator endpoint on ``<prefix>.admin.*``: ``status`` and ``describe`` answered
    here, the rest by the leading router."""

    async def status(args: dict[str, Any]) -> dict[str, Any]:
        report = await get_status()
        return status_to_wire(report).model_dump(mode="python")

    async def to_leader(op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Pass an operation only the leading router may perform to it (``<prefix>.ctl``)."""
        data = codec.encode_envelope(AdminRequest(op=op, args=args))
        try:
            msg = await nc.request(subjects.control(op), data, timeout=timeout)
        except nats.errors.NoRespondersError as e:
            raise IPCError(
                "no router leads right now; try again", code=ErrorCode.UNAVAILABLE
            ) from e
        except nats.errors.TimeoutError as e:
            raise IPCError(
                f"the leading router did not answer {op} within {timeout:g}s",
                code=ErrorCode.DEADLINE_EXCEEDED,
            ) from e
        reply = codec.decode_envelope(msg.data, AdminReply)
        if not reply.ok:
            info = reply.error or ErrorInfo(code=ErrorCode.UNKNOWN, message=f"{op} failed")
            raise IPCError(info.message, code=info.code, details=info.details)
        return reply.result or {}

    def forwarded(op: str, waits: str | None = None) -> OpHandler:
        """An operation the leading router answers: ``waits`` names the argument holding
        the seconds it may wait (a drain), added to the forwarding timeout."""

        async def forward(args: dict[str, Any]) -> dict[str, Any]:
            waited = args.get(waits, 10.0) if waits else 0.0
            extra = float(waited) if isinstance(waited, int | float) and waited > 0 else 10.0
            return await to_leader(op, args, min(extra, 300.0) + 5.0 if waits else 5.0)

        return forward

    ops: dict[str, OpHandler] = {
        AdminOp.STATUS: status,
        AdminOp.PROMOTE: forwarded(AdminOp.PROMOTE, "drain"),
        AdminOp.DRAIN: forwarded(AdminOp.DRAIN, "timeout"),
        AdminOp.SERVICES: forwarded(AdminOp.SERVICES),
        AdminOp.INSTANCES: forwarded(AdminOp.INSTANCES),
        AdminOp.ROUTES: forwarded(AdminOp.ROUTES),
        AdminOp.STATS: forwarded(AdminOp.STATS),
    }
    if describe is not None:
        ops[AdminOp.DESCRIBE] = describe_op(nc, codec, describe)
    return OpsEndpoint(nc, subjects.admin_all, ADMIN_QUEUE, codec, ops)


def _error(code: ErrorCode, message: str) -> AdminReply:
    return AdminReply(
        ok=False, error=ErrorInfo(code=code, message=message, retryable=code.retryable)
    )
