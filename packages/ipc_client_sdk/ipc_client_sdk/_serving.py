"""The serving side: ``instance = await client.serve(svc, instance_id=..., resources=...)``.

An instance registers with the router, heartbeats, and takes calls from its inbox
(``<prefix>.inst.<service>.<instance_id>``) with bounded concurrency. Each call is handled at
most once per call_id:

- a call already running here is not started again: the repeat waits for the first run's
  reply;
- a call that may be a repeat (the router delivered it again, or the caller chose its own
  call_id) is first looked up in the results bucket, and a recorded reply is sent back
  without running the handler;
- a handler's outcome (result or error) is recorded by call_id *before* the reply is sent,
  so that a repeat arriving after a router crash finds it.

What this cannot cover: a process that dies after the handler's side effect and before the
record is written. ``ctx.call_id`` is the idempotency key for that case downstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from ipc_client_sdk._admin import request_op
from ipc_client_sdk._contracts import (
    AdminReply,
    CallReply,
    CallRequest,
    ErrorCode,
    ErrorInfo,
    Heartbeat,
    Registration,
    RegistrationResult,
)
from ipc_client_sdk._errors import (
    CodecError,
    InvalidArgumentError,
    IPCError,
    RouterUnavailableError,
)
from ipc_client_sdk._service import CallContext, MethodSpec, Service
from ipc_client_sdk._subjects import validate_token

if TYPE_CHECKING:
    from ipc_client_sdk._client import IPCClient

_log = logging.getLogger("ipc_client_sdk.serving")

_RESULTS_TIMEOUT = 2.0
"""Seconds a read or write of the results bucket may take."""

_MAX_ERROR_MESSAGE = 500


class ServiceInstance:
    """One running instance of a service. Made by ``client.serve``; stop it with ``stop()``.

    Attributes:
        service: the service served.
        instance_id: this instance's id.
        claimed: the resources this instance owns (first come, first served).
        standby_for: resources it asked for that another instance owns: resource -> owner.
    """

    def __init__(
        self,
        client: IPCClient,
        service: Service,
        instance_id: str,
        resources: Sequence[str],
        *,
        concurrency: int,
        heartbeat_interval: float,
    ) -> None:
        self._client = client
        self._service = service
        self.service = service.name
        self.instance_id = instance_id
        self._resources = list(dict.fromkeys(resources))
        self._heartbeat_interval = heartbeat_interval
        self._session = os.urandom(8).hex()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: dict[str, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbox: Subscription | None = None
        self._beats: Subscription | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._reregister: asyncio.Task[None] | None = None
        self._results: KeyValue | None = None
        self._registration: RegistrationResult | None = None
        self._stopped = False
        self.claimed: tuple[str, ...] = ()
        self.standby_for: dict[str, str] = {}

    @property
    def role(self) -> str:
        """``"active"`` or ``"standby"``, as the router last said."""
        return self._registration.role if self._registration else "standby"

    @property
    def epoch(self) -> int:
        """The epoch the router registered this instance under."""
        return self._registration.epoch if self._registration else 0

    @property
    def inflight(self) -> int:
        """Calls being handled right now."""
        return len(self._tasks)

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the inbox, register, start heartbeating.

        Raises:
            RouterUnavailableError: no router answered, or none has set up JetStream.
            RemoteError: the router refused the registration (``ALREADY_EXISTS``: another
                live process holds this instance_id).
        """
        client = self._client
        nc = client.nats
        try:
            self._results = await nc.jetstream().key_value(client.subjects.results_bucket)
        except nats.js.errors.BucketNotFoundError as e:
            raise RouterUnavailableError(
                f"the results bucket {client.subjects.results_bucket} does not exist: "
                "start ipc-router on this NATS first",
                service=self.service,
            ) from e
        except nats.errors.Error as e:
            raise RouterUnavailableError(
                f"JetStream did not answer: {e or type(e).__name__}", service=self.service
            ) from e
        subjects = client.subjects
        self._inbox = await nc.subscribe(
            subjects.instance_inbox(self.service, self.instance_id),
            cb=self._on_call,
            pending_msgs_limit=1_000_000,
        )
        self._beats = await nc.subscribe(nc.new_inbox(), cb=self._on_heartbeat_reply)
        await nc.flush()  # the inbox must be live before the router routes here
        try:
            await self._register()
        except BaseException:
            await self._unsubscribe()
            raise
        self._heartbeat = asyncio.create_task(
            self._heartbeats(), name=f"ipc-heartbeat-{self.instance_id}"
        )

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Deregister, stop taking calls, and let the in-flight ones finish.

        Calls still running after ``timeout`` seconds are cancelled; the router delivers
        them again, and their records (if written) answer the repeat. Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        for task in (self._heartbeat, self._reregister):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            await request_op(
                self._client,
                self._client.subjects.control("deregister"),
                "deregister",
                {
                    "service": self.service,
                    "instance_id": self.instance_id,
                    "session": self._session,
                },
                timeout=min(timeout, self._client.request_timeout),
            )
        except IPCError as e:
            _log.warning("deregistering %s.%s failed: %s", self.service, self.instance_id, e)
        if self._inbox is not None:
            # Drain, not unsubscribe: calls already delivered but waiting for a free slot
            # are served, not dropped.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                drained = self._inbox.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py
                await asyncio.wait_for(drained, timeout)
        await self._unsubscribe()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _unsubscribe(self) -> None:
        for sub in (self._inbox, self._beats):
            if sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        self._inbox = self._beats = None

    async def _register(self) -> None:
        registration = Registration(
            service=self.service,
            instance_id=self.instance_id,
            methods=sorted(self._service.methods),
            resources=self._resources,
            session=self._session,
        )
        result = await request_op(
            self._client,
            self._client.subjects.control("register"),
            "register",
            registration.model_dump(exclude={"v"}),
        )
        self._registration = reg = self._client.codec.validate(result, RegistrationResult)
        self.claimed = tuple(reg.claimed)
        self.standby_for = dict(reg.standby_for)

    async def _heartbeats(self) -> None:
        nc = self._client.nats
        subject = self._client.subjects.heartbeat(self.service, self.instance_id)
        reply = self._beats.subject if self._beats else ""
        while True:
            beat = Heartbeat(
                service=self.service,
                instance_id=self.instance_id,
                sent_at=time.time(),
                role=self.role,
                epoch=self.epoch,
                inflight=self.inflight,
                session=self._session,
            )
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(subject, self._client.codec.encode_envelope(beat), reply=reply)
            await asyncio.sleep(self._heartbeat_interval)

    async def _on_heartbeat_reply(self, msg: Msg) -> None:
        try:
            answer = self._client.codec.decode_envelope(msg.data, AdminReply)
        except CodecError:
            return
        if answer.error is not None and answer.error.code is ErrorCode.NOT_FOUND:
            if self._reregister is None or self._reregister.done():
                self._reregister = asyncio.create_task(self._register_again())

    async def _register_again(self) -> None:
        _log.warning(
            "router does not know %s.%s; registering again", self.service, self.instance_id
        )
        try:
            await self._register()
        except IPCError as e:
            _log.warning("registering again failed: %s", e)

    # --- calls -------------------------------------------------------------------------
    async def _on_call(self, msg: Msg) -> None:
        await self._slots.acquire()  # back-pressure: later calls wait in the subscription
        task = asyncio.create_task(self._serve_one(msg))
        self._tasks.add(task)
        task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            _log.error("serving a call failed", exc_info=task.exception())

    async def _serve_one(self, msg: Msg) -> None:
        codec = self._client.codec
        try:
            request = codec.decode_envelope(msg.data, CallRequest)
        except CodecError as e:
            await self._respond(msg, self._error("", e.code, e.message))
            return
        call_id = request.call_id
        running = self._running.get(call_id)
        if running is not None:
            # The same call, delivered again while its first run is still going.
            await self._respond(msg, await asyncio.shield(running))
            return
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._running[call_id] = future
        try:
            reply = await self._execute(request)
            future.set_result(reply)
        except BaseException:
            future.cancel()  # a repeat waiting on this run gives up too; it is redelivered
            raise
        finally:
            del self._running[call_id]
        await self._respond(msg, reply)

    async def _execute(self, request: CallRequest) -> bytes:
        """Run one call (or find its record) and return the encoded reply."""
        codec = self._client.codec
        call_id = request.call_id
        spec = self._service.methods.get(request.method)
        if request.service != self.service or spec is None:
            known = ", ".join(sorted(self._service.methods))
            return self._error(
                call_id,
                ErrorCode.NOT_FOUND,
                f"{request.service}.{request.method} is not served here (methods: {known})",
            )
        if request.deadline is not None and request.deadline <= time.time():
            return self._error(
                call_id, ErrorCode.DEADLINE_EXCEEDED, "the deadline passed before the call ran"
            )
        if request.own_call_id or request.delivery > 1:
            try:
                recorded = await self._recorded(call_id)
            except IPCError as e:
                return self._error(call_id, e.code, e.message)
            if recorded is not None:
                return recorded
        try:
            argument = codec.decode(request.payload, spec.request_type)
        except CodecError as e:
            return self._error(call_id, ErrorCode.INVALID_ARGUMENT, e.message)
        reply = await self._run(spec, argument, request)
        await self._record(call_id, reply)
        return reply

    async def _run(self, spec: MethodSpec, argument: Any, request: CallRequest) -> bytes:
        ctx = CallContext(
            call_id=request.call_id,
            service=self.service,
            method=spec.name,
            instance_id=self.instance_id,
            resource_id=request.resource_id,
            deadline=request.deadline,
            caller=request.caller,
            epoch=request.epoch,
            delivery=request.delivery,
        )
        try:
            result = await spec.invoke(argument, ctx)
            payload = self._client.codec.encode(result)
        except IPCError as e:
            return self._error(request.call_id, e.code, e.message, details=e.details)
        except Exception as e:
            _log.exception("%s.%s failed (call %s)", self.service, spec.name, request.call_id)
            text = f"{type(e).__name__}: {e}"[:_MAX_ERROR_MESSAGE]
            return self._error(request.call_id, ErrorCode.INTERNAL, text)
        return self._client.codec.encode_envelope(
            CallReply(
                call_id=request.call_id,
                payload=payload,
                service=self.service,
                instance=self.instance_id,
            )
        )

    async def _recorded(self, call_id: str) -> bytes | None:
        """The recorded reply of an earlier run of ``call_id``, or None.

        Raises:
            IPCError: UNAVAILABLE when the record cannot be read: running the handler
                without knowing whether it already ran could run it twice.
        """
        assert self._results is not None
        try:
            async with asyncio.timeout(_RESULTS_TIMEOUT):
                entry = await self._results.get(call_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (TimeoutError, nats.errors.Error) as e:
            raise IPCError(
                f"cannot read the results record, so the call was not run: {e or type(e).__name__}",
                code=ErrorCode.UNAVAILABLE,
            ) from e
        return entry.value or None

    async def _record(self, call_id: str, reply: bytes) -> None:
        assert self._results is not None
        try:
            async with asyncio.timeout(_RESULTS_TIMEOUT):
                await self._results.put(call_id, reply)
        except (TimeoutError, nats.errors.Error) as e:
            # The caller still gets its reply; only a repeat after a router crash could
            # now run the handler again. Logged loudly because it weakens that guarantee.
            _log.error("result of call %s not recorded: %s", call_id, e or type(e).__name__)

    async def _respond(self, msg: Msg, reply: bytes) -> None:
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await self._client.nats.publish(msg.reply, reply)

    def _error(
        self,
        call_id: str,
        code: ErrorCode,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> bytes:
        info = ErrorInfo(
            code=code, message=message, details=details or {}, retryable=code.retryable
        )
        return self._client.codec.encode_envelope(
            CallReply(call_id=call_id, error=info, service=self.service, instance=self.instance_id)
        )


def check_serve_arguments(
    service: Service, instance_id: str, resources: Sequence[str], concurrency: int
) -> None:
    """Refuse bad ``serve`` arguments before anything is sent.

    Raises:
        InvalidArgumentError: the first bad argument, named.
    """
    if not isinstance(service, Service):
        raise InvalidArgumentError(f"serve() takes a Service, got {type(service).__name__}")
    if not service.methods:
        raise InvalidArgumentError(f"service {service.name!r} declares no methods")
    if isinstance(resources, str):
        raise InvalidArgumentError("resources must be a list of ids, not one string")
    if concurrency < 1:
        raise InvalidArgumentError(f"concurrency must be at least 1, got {concurrency}")
    try:
        validate_token(instance_id, "instance_id")
        for resource in resources:
            validate_token(resource, "resource")
    except ValueError as e:
        raise InvalidArgumentError(str(e), service=service.name) from e
