"""The serving side: ``instance = await client.serve(svc, instance_id=..., resources=...)``.

An instance registers with the router, heartbeats, and takes calls from its inbox
(``<prefix>.inst.<service>.<instance_id>.<session>``; the session is random per process, so
a process that lost its id to a newer one receives nothing) with bounded concurrency. Only
the router may publish on the inbox; callers' direct calls arrive one token deeper
(``<inbox>.d``), and the subject a call arrived on, never its body, says which it is.
``CallRunner`` (``_runner.py``) handles each call at most once per call.

**Roles and fencing.** The router says which role the instance has (``role``: ``active`` or
``standby`` in its service; ``claimed``: the resources it owns) in its answer to every
heartbeat, and at once when a role changes; ``role_changes()`` and ``on_role_change`` tell
the application. Each answer renews a *lease* counted from when that heartbeat was sent and
shorter than the router's failure timeout: an instance that stops hearing the router
(frozen, cut off) refuses calls (``FAILED_PRECONDITION``, *fenced*) before the router can
have promoted a standby in its place, and a call routed under an epoch older than its own
(routed before its role changed) is refused the same way. The router routes refused calls
again.

**Forged control messages.** Only a takeover notice (``FAILED_PRECONDITION``: another process
holds the instance id) makes an instance stop for good, and it acts on one only once its own
record in the registry bucket names another session (``_takeover.py``); an unconfirmed
notice costs a rate-limited log line. A forged state (role, epoch, draining) lasts until the
answer to the next heartbeat puts it right; a forged ``NOT_FOUND`` costs a registration the
router treats as the same process again. The instance's own requests (drain, deregister,
heartbeats) carry its session; the router refuses them without it.

What this cannot cover: a process that dies after the handler's side effect and before the
outcome is recorded. Its claim stays, so the call is not run again; repeats are told its
outcome is unknown. ``ctx.call_id`` is the key to check downstream for that case. A handler
already running when its process froze finishes when it wakes: it cannot be recalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ipc_client_sdk._acks import CallAcks
from ipc_client_sdk._admin import request_op
from ipc_client_sdk._contracts import (
    LEASE_FRACTION,
    REFUSED_HEADER,
    AdminOp,
    AdminReply,
    ErrorCode,
    Heartbeat,
    InstanceState,
    Registration,
    RegistrationResult,
)
from ipc_client_sdk._errors import (
    CodecError,
    InvalidArgumentError,
    IPCError,
    RemoteError,
    RouterUnavailableError,
)
from ipc_client_sdk._ledger import FastResults, ResultLedger, open_results
from ipc_client_sdk._link import Link
from ipc_client_sdk._logs import RateLimitedLog, clip
from ipc_client_sdk._nats import connection_error
from ipc_client_sdk._permissions import jetstream_api
from ipc_client_sdk._readiness import DEFAULT_READY_TIMEOUT, ReadyWait
from ipc_client_sdk._runner import CallRunner
from ipc_client_sdk._schemas import registered_contracts
from ipc_client_sdk._service import Service
from ipc_client_sdk._subjects import validate_token
from ipc_client_sdk._takeover import Takeover, check_takeover
from ipc_client_sdk._wire import Call

_log = logging.getLogger("ipc_client_sdk.serving")
_problems = RateLimitedLog(_log)  # what a peer's answers cause: few lines

_ROLES = frozenset({"active", "standby"})

_TAKEOVER_CHECK_INTERVAL = 1.0
"""Seconds between two checks of a takeover notice against the registry."""


@dataclass(frozen=True, slots=True)
class RoleChange:
    """An instance's roles after a change: what ``role_changes()`` yields.

    Attributes:
        role: ``"active"`` or ``"standby"`` in the service.
        epoch: the instance's epoch now; calls routed under an older one are refused.
        claimed: the resources it owns (is the active of) now.
    """

    role: str
    epoch: int
    claimed: tuple[str, ...]


RoleListener = Callable[[RoleChange], Awaitable[None] | None]
"""``on_role_change``: a plain or ``async`` function taking a ``RoleChange``."""


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
        link: Link,
        service: Service,
        instance_id: str,
        resources: Sequence[str],
        *,
        concurrency: int,
        heartbeat_interval: float,
        on_role_change: RoleListener | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        self._link = link
        self._ready_timeout = ready_timeout
        self._service = service
        self._contracts = registered_contracts(service)  # once: registering again reuses them
        self.service = service.name
        self.instance_id = instance_id
        self._resources = list(dict.fromkeys(resources))
        self._heartbeat_interval = heartbeat_interval
        self._session = os.urandom(8).hex()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbox: Subscription | None = None
        self._direct: Subscription | None = None
        self._beats: Subscription | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._reregister: asyncio.Task[None] | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._confirming: asyncio.Task[None] | None = None  # a takeover notice being checked
        self._confirmed_at = -_TAKEOVER_CHECK_INTERVAL  # monotonic: when the last check began
        self._runner: CallRunner | None = None
        self._queued = 0  # calls taken off a subscription, waiting for a slot
        self._acks = CallAcks(link, service.name)
        self._replaced = False
        self._closing = False
        self._stopped = False
        self._draining = False  # the router said a handover is under way
        self.claimed: tuple[str, ...] = ()
        self.standby_for: dict[str, str] = {}
        self._role = "standby"
        self._epoch = 0
        self._lease = 0.0
        self._lease_until = 0.0  # monotonic
        self._seq = 0
        self._sent: dict[int, float] = {}  # heartbeat seq -> monotonic time sent
        self._listeners: list[RoleListener] = [on_role_change] if on_role_change else []
        self._queues: set[asyncio.Queue[RoleChange | None]] = set()
        self._listener_tasks: set[asyncio.Task[object]] = set()

    @property
    def role(self) -> str:
        """``"active"`` or ``"standby"`` in the service, as the router last said."""
        return self._role

    @property
    def epoch(self) -> int:
        """This instance's epoch: it changes whenever one of its roles changes."""
        return self._epoch

    @property
    def fenced(self) -> bool:
        """True while the instance's lease has run out (it has not heard the router for
        longer than the lease): it refuses every call until the router answers again."""
        return time.monotonic() > self._lease_until

    async def role_changes(self) -> AsyncIterator[RoleChange]:
        """Yield the instance's roles each time they change, until it stops.

        ``async for change in instance.role_changes(): ...``
        """
        queue: asyncio.Queue[RoleChange | None] = asyncio.Queue()
        if self._stopped or self._replaced:
            return
        self._queues.add(queue)
        try:
            while True:
                change = await queue.get()
                if change is None:  # stopped or replaced
                    return
                yield change
        finally:
            self._queues.discard(queue)

    @property
    def replaced(self) -> bool:
        """True when another process took this instance id over; this one serves no more."""
        return self._replaced

    @property
    def inflight(self) -> int:
        """Calls being handled right now, with those delivered and waiting for a slot (a
        heartbeat saying none must mean that every call routed here before it is done)."""
        waiting = self._inbox.pending_msgs if self._inbox is not None else 0
        return len(self._tasks) + self._queued + waiting

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the inbox, register, start heartbeating. Waits (up to ``ready_timeout``
        seconds in all) for a router to have set up JetStream and to answer.

        Raises:
            RouterUnavailableError: no router answered, or none has set up JetStream, within
                ``ready_timeout``.
            RemoteError: the router refused the registration (``ALREADY_EXISTS``: another
                live process holds this instance_id).
        """
        link = self._link
        nc = link.nats
        bucket = link.subjects.results_bucket
        ready = ReadyWait(self._ready_timeout, f"{self.service}.{self.instance_id}")
        try:
            results = await ready.retry(
                lambda: link.permissions.run(
                    open_results(nc.jetstream(), bucket, self.service),
                    jetstream_api(f"KV_{bucket}"),
                ),
                waiting_for=f"the results bucket {bucket}",
                missing=lambda e: isinstance(e, nats.js.errors.BucketNotFoundError),
            )
        except nats.js.errors.BucketNotFoundError as e:
            raise RouterUnavailableError(
                f"the results bucket {bucket} does not exist after {self._ready_timeout:g}s: "
                "start ipc-router on this NATS first",
                service=self.service,
            ) from e
        except nats.errors.Error as e:
            raise RouterUnavailableError(
                f"JetStream did not answer: {e or type(e).__name__}", service=self.service
            ) from e
        self._runner = CallRunner(
            link.codec,
            self._service,
            self.instance_id,
            ResultLedger(
                FastResults(results, link.subjects.results_bucket, link.replies),
                self.instance_id,
                session=self._session,
            ),
            admit=self._admit,
            metrics=link.metrics,
        )
        subjects = link.subjects
        inbox = subjects.instance_inbox(self.service, self.instance_id, self._session)
        direct = subjects.instance_direct(self.service, self.instance_id, self._session)
        control = subjects.instance_control(self.service, self.instance_id, self._session)
        try:
            self._inbox = await nc.subscribe(inbox, cb=self._on_call, pending_msgs_limit=1_000_000)
            self._direct = await nc.subscribe(
                direct, cb=self._on_direct_call, pending_msgs_limit=1_000_000
            )
            self._beats = await nc.subscribe(control, cb=self._on_control)
            # The inbox must be live before the router routes here (or refused: say so).
            await link.permissions.confirm(nc, [inbox, direct, control])
            await ready.retry(
                self._register, waiting_for="a router to register with", missing=_no_router_yet
            )
        except nats.errors.Error as e:
            await self._unsubscribe()
            raise connection_error(link.servers, e) from e
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
        """Hand over, stop taking calls, let the in-flight ones finish, and deregister.

        The router first stops routing new calls here (calls for this instance's roles wait
        for the standby that takes them over: none fails). The instance finishes the calls
        it has; those still running when ``timeout`` is nearly up are cancelled and
        answered ``ABORTED``, which is recorded, so a retry with the same call_id does not
        run them again either (their effects are unknown). Only then does it deregister,
        and the router promotes the first healthy standby of each of its roles at once, so
        the two never run calls of one role together. Heartbeats go on meanwhile.
        Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left(reserve: float = 0.0) -> float:
            return max(0.1, deadline - reserve - loop.time())

        await self._drain(wait=max(0.0, left(reserve=1.5) - 0.5))
        for sub in (self._direct, self._inbox):
            if sub is None:
                continue
            # Drain, not unsubscribe: calls already delivered but waiting for a free slot
            # are answered, not dropped (direct ones first: they are refused at once, and
            # their callers go to the router).
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                drained = sub.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py
                await asyncio.wait_for(drained, left(reserve=1.0))
        self._closing = True  # whatever the drain left is refused, not served after we return
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=left(reserve=1.0))
            for task in late:
                task.cancel()  # answered ABORTED, and recorded
            await asyncio.gather(*late, return_exceptions=True)
        await self._deregister(timeout=min(left(), self._link.request_timeout))
        await self._acks.close()
        for background in (self._heartbeat, self._reregister, self._cleanup, self._confirming):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        self._end_role_changes()
        await self._unsubscribe()

    def _end_role_changes(self) -> None:
        for queue in self._queues:
            queue.put_nowait(None)

    async def _drain(self, *, wait: float) -> None:
        """Ask the router to route nothing new here, and wait (``wait`` seconds at most)
        until the calls it sent here are answered."""
        args = {
            "service": self.service,
            "instance_id": self.instance_id,
            "timeout": wait,
            "handover": False,  # we wait for our own calls; deregistering hands over
            "session": self._session,  # only the instance itself may ask this
        }
        try:
            await request_op(
                self._link,
                self._link.subjects.control(AdminOp.DRAIN, self.service),
                AdminOp.DRAIN,
                args,
                timeout=wait + 2.0,
            )
        except IPCError as e:  # no router: stop all the same, it will fail over
            if e.code is not ErrorCode.NOT_FOUND:
                _log.warning("draining %s.%s failed: %s", self.service, self.instance_id, clip(e))

    async def _deregister(self, *, timeout: float) -> None:
        args: dict[str, object] = {
            "service": self.service,
            "instance_id": self.instance_id,
            "session": self._session,
        }
        try:
            await request_op(
                self._link,
                self._link.subjects.control(AdminOp.DEREGISTER, self.service),
                AdminOp.DEREGISTER,
                args,
                timeout=timeout,
            )
        except IPCError as e:
            if e.code not in (ErrorCode.NOT_FOUND, ErrorCode.FAILED_PRECONDITION):
                _log.warning(
                    "deregistering %s.%s failed: %s", self.service, self.instance_id, clip(e)
                )

    async def _unsubscribe(self) -> None:
        for sub in (self._inbox, self._direct, self._beats):
            if sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        self._inbox = self._direct = self._beats = None

    async def _register(self) -> None:
        registration = Registration(
            service=self.service,
            instance_id=self.instance_id,
            methods=sorted(self._service.methods),
            resources=self._resources,
            session=self._session,
            load_balanced=self._service.load_balanced,
            direct_methods=sorted(n for n, m in self._service.methods.items() if not m.durable),
            direct=True,
            contracts=self._contracts,
        )
        sent = time.monotonic()
        result = await request_op(
            self._link,
            self._link.subjects.control(AdminOp.REGISTER, self.service),
            AdminOp.REGISTER,
            registration.model_dump(exclude={"v"}),
        )
        reg = self._link.codec.validate(result, RegistrationResult)
        self._lease = reg.lease or reg.heartbeat_timeout * LEASE_FRACTION
        if self._lease and self._heartbeat_interval > self._lease / 2:
            # A lost heartbeat must not fence the instance, whatever was asked for.
            _log.warning(
                "heartbeat_interval %.2fs is too long for the router's lease of %.2fs; "
                "%s.%s heartbeats every %.2fs instead",
                self._heartbeat_interval,
                self._lease,
                self.service,
                self.instance_id,
                self._lease / 2,
            )
            self._heartbeat_interval = self._lease / 2
        self._lease_until = sent + self._lease
        if self._runner is not None and reg.heartbeat_timeout > 0:
            self._runner.ledger.grace = reg.heartbeat_timeout
        self.standby_for = dict(reg.standby_for)
        state = InstanceState(role=reg.role, epoch=reg.epoch, owned=reg.claimed)
        # The first registration sets the roles; registering again may change them.
        self._apply(state, force=True, announce=self._epoch != 0)

    async def _heartbeats(self) -> None:
        nc = self._link.nats
        subject = self._link.subjects.heartbeat(self.service, self.instance_id)
        reply = self._beats.subject if self._beats else ""
        beats = 1
        while True:
            self._seq += 1
            self._sent[self._seq] = time.monotonic()
            self._sent.pop(self._seq - 64, None)  # answers that old renew nothing
            beat = Heartbeat(
                service=self.service,
                instance_id=self.instance_id,
                sent_at=time.time(),
                role=self.role,
                epoch=self.epoch,
                inflight=self.inflight,
                session=self._session,
                seq=self._seq,
                draining=self._refuses_direct,
                calls=self._runner.answered.take() if self._runner is not None else None,
            )
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(subject, self._link.codec.encode_envelope(beat), reply=reply)
            if self._runner is not None and beats % 10 == 0:
                if self._cleanup is None or self._cleanup.done():  # off the heartbeat path
                    self._cleanup = asyncio.create_task(self._runner.ledger.clean_up())
            beats += 1
            await asyncio.sleep(self._heartbeat_interval)

    @staticmethod
    def _from_nats(msg: Msg, sub: Subscription | None) -> bool:
        """Whether ``msg`` was published on the subscribed subject itself.

        A JetStream push consumer delivers to whatever ``deliver_subject`` its creator
        named, past the creator's own publish permissions, but keeps the stored message's
        subject and puts a ``$JS.ACK`` reply on it: such a message is a forgery injected
        through a stream, never the router's, and is dropped.
        """
        return (
            sub is not None
            and msg.subject == sub.subject
            and not (msg.reply or "").startswith("$JS.")
        )

    async def _on_control(self, msg: Msg) -> None:
        if not self._from_nats(msg, self._beats):
            return
        try:
            answer = self._link.codec.decode_envelope(msg.data, AdminReply)
            state = (
                self._link.codec.validate(answer.result, InstanceState)
                if answer.ok and answer.result is not None
                else None
            )
        except CodecError:
            return
        if state is not None and state.role not in _ROLES:
            return  # not the router's: it never sends another role
        if state is not None:
            if self._epoch == 0:
                return  # not registered yet: the registration's answer sets the roles
            if state.seq is not None and state.seq in self._sent and not self._replaced:
                # Never longer than the lease it registered with: a forged answer must not
                # keep an instance unfenced for years.
                lease = min(state.lease or self._lease, self._lease)
                self._lease_until = max(self._lease_until, self._sent[state.seq] + lease)
            if state.epoch >= self._epoch:
                self._draining = state.draining
            self._apply(state)
            return
        if answer.error is None:
            return
        if answer.error.code is ErrorCode.FAILED_PRECONDITION and not self._replaced:
            # One check at a time, one a second at most: a flood of notices costs few reads,
            # and a real one is repeated in the answer to every heartbeat.
            idle = self._confirming is None or self._confirming.done()
            if idle and time.monotonic() - self._confirmed_at >= _TAKEOVER_CHECK_INTERVAL:
                self._confirmed_at = time.monotonic()
                self._confirming = asyncio.create_task(self._confirm_takeover(answer.error.message))
        elif answer.error.code is ErrorCode.NOT_FOUND and not self._replaced:
            if self._reregister is None or self._reregister.done():
                self._reregister = asyncio.create_task(self._register_again())

    async def _confirm_takeover(self, notice: str) -> None:
        """Stop serving if the registry confirms the takeover ``notice`` announced; else
        ignore it (anyone who may publish on the control subject can send one)."""
        name = f"{self.service}.{self.instance_id}"
        timeout = self._link.request_timeout
        found = await check_takeover(
            self._link, self.service, self.instance_id, self._session, timeout=timeout
        )
        if found is not Takeover.CONFIRMED:
            _problems.warning(
                f"unconfirmed takeover {name}",
                "%s keeps serving: its registry record does not confirm the takeover notice "
                "%s (%s)",
                name,
                clip(notice),
                "it names this process" if found is Takeover.DENIED else "it could not be read",
            )
            return
        if self._replaced or self._stopped:
            return
        self._replaced = True
        _log.error(
            "%s was taken over by another process: %s. This one stops serving.", name, clip(notice)
        )
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._end_role_changes()

    def _apply(self, state: InstanceState, *, force: bool = False, announce: bool = True) -> None:
        """Take the roles the router announced, and tell the listeners of a change."""
        if state.epoch < self._epoch and not force:
            return  # an answer overtaken by a newer one
        owned = tuple(state.owned) if state.owned is not None else self.claimed
        changed = (state.role, state.epoch, owned) != (self._role, self._epoch, self.claimed)
        self._role, self._epoch, self.claimed = state.role, state.epoch, owned
        if not changed or not announce:
            return
        _log.info(
            "%s.%s is %s (epoch %d, owns %d resources)",
            self.service,
            self.instance_id,
            state.role,
            state.epoch,
            len(owned),
        )
        change = RoleChange(state.role, state.epoch, owned)
        for queue in self._queues:
            queue.put_nowait(change)
        for listener in self._listeners:
            try:
                result = listener(change)
                if asyncio.iscoroutine(result):
                    task: asyncio.Task[object] = asyncio.create_task(result)
                    self._listener_tasks.add(task)
                    task.add_done_callback(self._listener_done)
            except Exception:
                _log.exception("on_role_change of %s.%s failed", self.service, self.instance_id)

    def _listener_done(self, task: asyncio.Task[object]) -> None:
        self._listener_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("on_role_change failed", exc_info=task.exception())

    @property
    def _refuses_direct(self) -> bool:
        """Whether a handover is under way or the instance is stopping: direct calls are
        refused (their callers fall back to the router, which holds them meanwhile)."""
        return self._draining or self._stopped or self._closing

    def _admit(self, request: Call) -> str | None:
        """Why this instance must refuse a call now (None: it may run it)."""
        if self.fenced:
            return "fenced"
        if request.direct:
            # Sent by a caller from its routing cache: the cache may be behind the router.
            if self._refuses_direct:
                return "draining"
            if request.epoch != self._epoch:
                return "stale-epoch"
            if not (
                (request.resource_id is not None and request.resource_id in self.claimed)
                or self._service.load_balanced
                or self._role == "active"
            ):
                return "not-owner"
            return None
        if request.epoch is not None and request.epoch < self._epoch:
            return "stale-epoch"
        if self._draining:
            # A handover waits for this instance to be idle: a call routed here by a router
            # whose table is behind goes back, to be routed to whoever takes over.
            return "draining"
        return None

    async def _register_again(self) -> None:
        # Anyone who may publish on the control subject can ask for this: rate-limited.
        name = f"{self.service}.{self.instance_id}"
        _problems.warning(f"re-register {name}", "router does not know %s; registering again", name)
        try:
            await self._register()
        except IPCError as e:
            _problems.warning(f"re-register failed {name}", "registering again failed: %s", clip(e))

    # --- calls -------------------------------------------------------------------------
    async def _on_call(self, msg: Msg) -> None:
        """A call the router routed here (the inbox)."""
        if self._from_nats(msg, self._inbox):
            await self._take(msg, direct=False)

    async def _on_direct_call(self, msg: Msg) -> None:
        """A caller's direct call (the inbox's ``.d`` subject)."""
        if self._from_nats(msg, self._direct):
            await self._take(msg, direct=True)

    async def _take(self, msg: Msg, *, direct: bool) -> None:
        runner = self._runner
        assert runner is not None  # set before the inbox is subscribed
        if not self._closing:
            self._queued += 1
            try:
                await self._slots.acquire()  # back-pressure: later calls wait in the subscription
            finally:
                self._queued -= 1
            if self._closing:
                self._slots.release()
        if self._closing:
            # stop() ran out of time draining: refuse what is left, quickly and retryably.
            call = None if direct else runner.read(msg.data, direct=False)
            if isinstance(call, Call) and (ack := self._acks.subject_of(call)) is not None:
                await self._acks.refused(ack, call)  # routed again, to whoever takes over
                return
            message = f"instance {self.instance_id} is stopping"
            await self._respond(msg, runner.error("", ErrorCode.UNAVAILABLE, message), "stopping")
            return
        task = asyncio.create_task(self._serve_one(msg, direct=direct))
        self._tasks.add(task)
        task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            _log.error("serving a call failed", exc_info=task.exception())

    async def _serve_one(self, msg: Msg, *, direct: bool) -> None:
        runner = self._runner
        assert runner is not None
        call = runner.read(msg.data, direct=direct)
        if isinstance(call, bytes):  # not a call: say why to whoever sent it
            await self._respond(msg, call)
            return
        ack = None if direct else self._acks.subject_of(call)
        if ack is None:  # a direct call: answer whoever sent it
            reply, refused = await runner.run(call, msg.headers)
            await self._respond(msg, reply, refused)
            return
        # Forwarded by a router: answer the caller as soon as the outcome is known (while
        # it is recorded), then ack; a call refused unrun is nak'ed, to be routed again.
        answered = False

        async def answer(reply: bytes) -> None:
            nonlocal answered
            answered = True
            await self._respond(msg, reply)

        self._acks.running(ack, call)
        try:
            reply, refused = await runner.run(call, msg.headers, answer=answer)
            if refused is not None:
                await self._acks.refused(ack, call)
                return
            if not answered:
                await self._respond(msg, reply)
            await self._acks.done(ack, call)
        finally:
            self._acks.finished(ack)

    async def _respond(self, msg: Msg, reply: bytes, refused: str | None = None) -> None:
        if msg.reply:
            headers = {REFUSED_HEADER: refused} if refused else None
            with contextlib.suppress(nats.errors.Error, IPCError):  # closed: nobody to tell
                await self._link.nats.publish(msg.reply, reply, headers=headers)


def _no_router_yet(error: Exception) -> bool:
    """Whether a registration failed only because no router runs yet (nothing answers on
    the control subject, or no router leads yet): nothing was registered, so it may be
    sent again."""
    if isinstance(error, RemoteError):
        return error.code is ErrorCode.UNAVAILABLE
    return isinstance(error, RouterUnavailableError) and isinstance(
        error.__cause__, nats.errors.NoRespondersError
    )


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
