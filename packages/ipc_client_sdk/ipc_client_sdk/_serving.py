"""The serving side: ``instance = await client.serve(svc, instance_id=..., resources=...)``.

An instance registers with the router, heartbeats, and takes calls from its inbox
(``<prefix>.inst.<service>.<instance_id>.<session>``; the session is random per process, so
a process that lost its id to a newer one receives nothing) with bounded concurrency.
``CallRunner`` (``_runner.py``) handles each call at most once per call.

What this cannot cover: a process that dies after the handler's side effect and before the
outcome is recorded. Its claim stays, so the call is not run again; repeats are told its
outcome is unknown. ``ctx.call_id`` is the key to check downstream for that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ipc_client_sdk._admin import request_op
from ipc_client_sdk._contracts import (
    AdminReply,
    ErrorCode,
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
from ipc_client_sdk._ledger import ResultLedger
from ipc_client_sdk._nats import connection_error
from ipc_client_sdk._runner import CallRunner
from ipc_client_sdk._service import Service
from ipc_client_sdk._subjects import validate_token

if TYPE_CHECKING:
    from ipc_client_sdk._client import IPCClient

_log = logging.getLogger("ipc_client_sdk.serving")


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
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbox: Subscription | None = None
        self._beats: Subscription | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._reregister: asyncio.Task[None] | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._runner: CallRunner | None = None
        self._replaced = False
        self._closing = False
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
    def replaced(self) -> bool:
        """True when another process took this instance id over; this one serves no more."""
        return self._replaced

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
            results = await nc.jetstream().key_value(client.subjects.results_bucket)
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
        self._runner = CallRunner(
            client.codec, self._service, self.instance_id, ResultLedger(results, self.instance_id)
        )
        inbox = client.subjects.instance_inbox(self.service, self.instance_id, self._session)
        try:
            self._inbox = await nc.subscribe(inbox, cb=self._on_call, pending_msgs_limit=1_000_000)
            self._beats = await nc.subscribe(nc.new_inbox(), cb=self._on_heartbeat_reply)
            await nc.flush()  # the inbox must be live before the router routes here
            await self._register()
        except nats.errors.Error as e:
            await self._unsubscribe()
            raise connection_error(client.servers, e) from e
        except IPCError:
            # The router may have registered us and only the answer was lost: undo it, so
            # a phantom instance does not hold our claims until it is reaped.
            await self._unsubscribe()
            await self._deregister(timeout=1.0)
            raise
        except BaseException:
            await self._unsubscribe()
            raise
        self._heartbeat = asyncio.create_task(
            self._heartbeats(), name=f"ipc-heartbeat-{self.instance_id}"
        )

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Deregister, stop taking calls, and let the in-flight ones finish.

        Calls still running after ``timeout`` seconds are cancelled and answered
        ``ABORTED``; that outcome is recorded, so a retry with the same call_id does not run
        them again either (their effects are unknown). Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left() -> float:
            return max(0.1, deadline - loop.time())

        for task in (self._heartbeat, self._reregister, self._cleanup):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._deregister(timeout=min(left(), self._client.request_timeout))
        if self._inbox is not None:
            # Drain, not unsubscribe: calls already delivered but waiting for a free slot
            # are served, not dropped.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                drained = self._inbox.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py
                await asyncio.wait_for(drained, left())
        self._closing = True  # whatever the drain left is refused, not served after we return
        await self._unsubscribe()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=left())
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _deregister(self, *, timeout: float) -> None:
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
                timeout=timeout,
            )
        except IPCError as e:
            if e.code not in (ErrorCode.NOT_FOUND, ErrorCode.FAILED_PRECONDITION):
                _log.warning("deregistering %s.%s failed: %s", self.service, self.instance_id, e)

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
        beats = 1
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
            if self._runner is not None and beats % 10 == 0:
                if self._cleanup is None or self._cleanup.done():  # off the heartbeat path
                    self._cleanup = asyncio.create_task(self._runner.ledger.clean_up())
            beats += 1
            await asyncio.sleep(self._heartbeat_interval)

    async def _on_heartbeat_reply(self, msg: Msg) -> None:
        try:
            answer = self._client.codec.decode_envelope(msg.data, AdminReply)
        except CodecError:
            return
        if answer.error is None:
            return
        if answer.error.code is ErrorCode.FAILED_PRECONDITION and not self._replaced:
            self._replaced = True
            _log.error(
                "%s.%s was taken over by another process: %s. This one stops serving.",
                self.service,
                self.instance_id,
                answer.error.message,
            )
            if self._heartbeat is not None:
                self._heartbeat.cancel()
        elif answer.error.code is ErrorCode.NOT_FOUND and not self._replaced:
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
        runner = self._runner
        assert runner is not None  # set before the inbox is subscribed
        if not self._closing:
            await self._slots.acquire()  # back-pressure: later calls wait in the subscription
            if self._closing:
                self._slots.release()
        if self._closing:
            # stop() ran out of time draining: refuse what is left, quickly and retryably.
            message = f"instance {self.instance_id} is stopping"
            await self._respond(msg, runner.error("", ErrorCode.UNAVAILABLE, message))
            return
        task = asyncio.create_task(self._serve_one(msg))
        self._tasks.add(task)
        task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            _log.error("serving a call failed", exc_info=task.exception())

    async def _serve_one(self, msg: Msg) -> None:
        assert self._runner is not None
        await self._respond(msg, await self._runner.handle(msg.data))

    async def _respond(self, msg: Msg, reply: bytes) -> None:
        if msg.reply:
            with contextlib.suppress(nats.errors.Error, IPCError):  # closed: nobody to tell
                await self._client.nats.publish(msg.reply, reply)


def check_serve_arguments(
    service: Service,
    instance_id: str,
    resources: Sequence[str],
    concurrency: int,
    heartbeat_interval: float,
) -> None:
    """Refuse bad ``serve`` arguments before anything is sent.

    Raises:
        InvalidArgumentError: the first bad argument, named.
    """
    if not isinstance(service, Service):
        raise InvalidArgumentError(f"serve() takes a Service, got {type(service).__name__}")
    if not service.methods:
        raise InvalidArgumentError(f"service {service.name!r} declares no methods")
    if isinstance(resources, str) or not isinstance(resources, Sequence | set | frozenset):
        raise InvalidArgumentError(f"resources must be a list of ids, got {resources!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidArgumentError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
    if (
        isinstance(heartbeat_interval, bool)
        or not isinstance(heartbeat_interval, int | float)
        or not 0.05 <= heartbeat_interval <= 60
    ):
        raise InvalidArgumentError(
            f"heartbeat_interval must be between 0.05 and 60 seconds, got {heartbeat_interval!r}"
        )
    try:
        validate_token(instance_id, "instance_id")
        for resource in resources:
            validate_token(resource, "resource")
    except ValueError as e:
        raise InvalidArgumentError(str(e), service=service.name) from e
