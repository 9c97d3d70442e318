"""Instance control: registration, deregistration, heartbeats and the health sweep.

- ``<prefix>.ctl.register`` / ``<prefix>.ctl.deregister``: request/reply (``AdminRequest``
  with the ``Registration`` fields as ``args``), answered by one router.
  A planned stop is ``drain`` then ``deregister``: the instance gets no new calls, its roles
  pass to the first healthy standbys once the calls the router sent there are answered, and
  deregistering hands over whatever is left at once.
- ``<prefix>.ctl.promote`` (``service``, ``instance_id``, ``drain``): an operator's manual
  promotion, handed over the same way (the outgoing actives are drained first); ``drain``,
  ``services``, ``instances``, ``routes``: the operators' views. Any router passes these on
  from ``<prefix>.admin.<op>``.
- ``<prefix>.hb.<service>.<instance_id>``: heartbeats, seen by the leading router. Each is
  answered on its reply subject (the instance's control subject) with the instance's
  ``InstanceState``: role, epoch and a lease counted from when the heartbeat was sent. A
  heartbeat from an instance this router does not know is answered with ``NOT_FOUND``, and
  the SDK registers again.
- A sweep every tenth of the heartbeat timeout marks silent instances unhealthy and fails
  over the roles of the failed actives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from ipc_client_sdk import CodecError, IPCError
from ipc_client_sdk.protocol import (
    AdminReply,
    Codec,
    DrainResult,
    ErrorCode,
    ErrorInfo,
    Heartbeat,
    InstanceInfo,
    Registration,
    RegistrationResult,
    RouteInfo,
    ServiceInfo,
    Subjects,
    validate_token,
)
from ipc_router.api.admin import AdminOp, OpsEndpoint
from ipc_router.api.calls import InflightTracker
from ipc_router.api.events import instance_state, tell_instance
from ipc_router.application.registry import HeartbeatOutcome, InstanceRegistry
from ipc_router.application.views import (
    AmbiguousInstanceError,
    describe_instances,
    describe_routes,
    describe_services,
    find_instance,
)
from ipc_router.domain import (
    Health,
    InstanceRecord,
    NoHealthyInstanceError,
    Role,
    UnknownInstanceError,
    UnknownServiceError,
)

_log = logging.getLogger("ipc_router.control")

CONTROL_QUEUE = "ipc-router-control"
"""Queue group of the control subscription: one router answers each registration."""

LEASE_FRACTION = 0.8
"""The instances' lease as a share of the heartbeat timeout. Below 1 so that an instance cut
off from the router fences itself before the router can promote another in its place."""

MAX_DRAIN = 300.0
"""The longest a handover waits for the calls in flight to the outgoing instance."""

_DRAIN_LOCK_WAIT = 5.0
"""Seconds a drain waits for another handover of its service before it is refused."""

_DEREGISTER_LOCK_WAIT = 5.0
"""Seconds a deregistration waits for a handover of its service before it goes ahead."""


class _Deregistration(BaseModel):
    service: str
    instance_id: str
    session: str | None = None


class _Promotion(BaseModel):
    service: str
    instance_id: str
    drain: float = 10.0


class _Drain(BaseModel):
    instance_id: str
    service: str | None = None
    timeout: float = 30.0
    cancel: bool = False
    handover: bool = True
    """False for a stopping instance: it waits for its own calls, then deregisters, which
    hands its roles over at once."""


class _Filter(BaseModel):
    service: str | None = None
    resource: str | None = None


def _invalid(message: str) -> IPCError:
    return IPCError(message, code=ErrorCode.INVALID_ARGUMENT)


class ControlAPI:
    """Serves registration and heartbeats, and sweeps for silent instances."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        codec: Codec,
        registry: InstanceRegistry,
        tracker: InflightTracker,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._codec = codec
        self._registry = registry
        self._tracker = tracker
        self.lease = registry.table.heartbeat_timeout * LEASE_FRACTION
        self._locks: dict[str, asyncio.Lock] = {}
        self._reported: dict[tuple[str, str], tuple[float, int, bool]] = {}
        """(service, instance) -> when its last heartbeat came, its calls running then, and
        whether it knew it was draining (and so refused direct calls)."""
        self._handing_over: dict[tuple[str, str], asyncio.Task[None]] = {}
        ops: dict[str, AdminOp] = {
            "register": self._register,
            "deregister": self._deregister,
            "promote": self._promote,
            "drain": self._drain,
            "services": self._services,
            "instances": self._instances,
            "routes": self._routes,
        }
        self._endpoint = OpsEndpoint(nc, subjects.control_all, CONTROL_QUEUE, codec, ops)
        self._heartbeats: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the control and heartbeat subscriptions and start the sweep."""
        await self._endpoint.start()
        self._heartbeats = await self._nc.subscribe(
            self._subjects.heartbeat_all, cb=self._on_heartbeat, pending_msgs_limit=100_000
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="ipc-router-health-sweep")
        self._flusher = asyncio.create_task(self._flush(), name="ipc-router-flush")

    async def stop(self) -> None:
        """Stop the sweep and both subscriptions."""
        for task in (self._sweeper, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweeper = self._flusher = None
        for handover in list(self._handing_over.values()):
            handover.cancel()
        await asyncio.gather(*self._handing_over.values(), return_exceptions=True)
        await self._endpoint.stop()
        if self._heartbeats is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._heartbeats.unsubscribe()
            self._heartbeats = None

    async def _register(self, args: dict[str, Any]) -> dict[str, Any]:
        reg: Registration = self._codec.validate(args, Registration)
        try:
            validate_token(reg.service, "service")
            validate_token(reg.instance_id, "instance_id")
            if reg.session:
                validate_token(reg.session, "session")
            for method in reg.methods:
                validate_token(method, "method")
            if not set(reg.direct_methods) <= set(reg.methods):
                raise ValueError("direct_methods must be among the methods")
            for resource in reg.resources:
                validate_token(resource, "resource")
        except ValueError as e:
            raise _invalid(str(e)) from e
        if not reg.session:
            raise _invalid("a registration needs a session (this SDK is too old)")
        now = self._registry.now()
        outcome = await self._registry.register(
            InstanceRecord(
                service=reg.service,
                instance_id=reg.instance_id,
                role=Role.STANDBY,
                health=Health.HEALTHY,
                epoch=1,
                registered_at=now,
                last_heartbeat_at=now,
                resources=tuple(reg.resources),
                methods=tuple(reg.methods),
                direct_methods=tuple(reg.direct_methods),
                direct=reg.direct,
                session=reg.session or "",
                load_balanced=reg.load_balanced,
            )
        )
        record = outcome.record
        return RegistrationResult(
            service=record.service,
            instance_id=record.instance_id,
            role=record.role.value,
            epoch=record.epoch,
            claimed=list(outcome.claimed),
            standby_for=outcome.standby_for,
            lease=self.lease,
            heartbeat_timeout=self._registry.table.heartbeat_timeout,
        ).model_dump()

    async def _deregister(self, args: dict[str, Any]) -> dict[str, Any]:
        req: _Deregistration = self._codec.validate(args, _Deregistration)
        record = self._registry.table.get(req.service, req.instance_id)
        if record is None:
            raise IPCError(
                f"instance {req.instance_id!r} of {req.service!r} is not registered",
                code=ErrorCode.NOT_FOUND,
            )
        if record.session and req.session and req.session != record.session:
            raise IPCError(
                f"instance {req.instance_id!r} is now held by another process",
                code=ErrorCode.FAILED_PRECONDITION,
            )
        async with self._handover(req.service, _DEREGISTER_LOCK_WAIT, required=False):
            await self._registry.deregister(req.service, req.instance_id)
        self._reported.pop((req.service, req.instance_id), None)
        return {"deregistered": record.key}

    async def _promote(self, args: dict[str, Any]) -> dict[str, Any]:
        """Hand the roles ``instance_id`` can take over to it: drain the instances that hold
        them, wait (one deadline for all) until no call is in flight to them, then move the
        roles. Nothing changes if the calls do not finish in time or the roles moved
        meanwhile (a failover): two instances never hold one role's calls at once."""
        req: _Promotion = self._codec.validate(args, _Promotion)
        registry, table = self._registry, self._registry.table
        if table.get(req.service, req.instance_id) is None:
            raise IPCError(
                f"instance {req.instance_id!r} of {req.service!r} is not registered",
                code=ErrorCode.NOT_FOUND,
            )
        drain = min(max(req.drain, 0.0), MAX_DRAIN) if math.isfinite(req.drain) else 0.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain  # one deadline, the wait for the lock included
        async with self._handover(req.service, drain):
            outgoing = table.actives_of(req.service, req.instance_id)
            already = {i for i in outgoing if (r := table.get(req.service, i)) and r.draining}
            try:
                for instance_id in outgoing:
                    await self._set_draining(req.service, instance_id, True)
                since = self._registry.monotonic()
                for instance_id in outgoing:
                    if not await self._idle(req.service, instance_id, since, deadline):
                        busy = self._tracker.count(req.service, instance_id)
                        raise IPCError(
                            f"instance {instance_id!r} still has {busy} calls in flight after "
                            f"{drain:g}s; nothing was changed (try a longer drain)",
                            code=ErrorCode.FAILED_PRECONDITION,
                        )
                if set(table.actives_of(req.service, req.instance_id)) - set(outgoing):
                    raise IPCError(
                        "the roles changed while the current actives drained (a failover?); "
                        "nothing was changed: look again and retry",
                        code=ErrorCode.ABORTED,
                    )
                record = await registry.promote(req.service, req.instance_id)
            except UnknownInstanceError as e:
                raise IPCError(str(e), code=ErrorCode.NOT_FOUND) from e
            except NoHealthyInstanceError as e:
                raise IPCError(str(e), code=ErrorCode.FAILED_PRECONDITION) from e
            finally:
                for instance_id in outgoing:
                    if instance_id not in already and table.get(req.service, instance_id):
                        await self._set_draining(req.service, instance_id, False)
        return {
            "service": record.service,
            "instance_id": record.instance_id,
            "role": record.role.value,
            "epoch": record.epoch,
            "owned": list(table.owned(record.service, record.instance_id)),
            "demoted": outgoing,
        }

    async def _set_draining(self, service: str, instance_id: str, draining: bool) -> None:
        """Drain an instance (or stop draining it), and tell it at once: while draining it
        refuses direct calls, which then go through this router and wait."""
        if draining:
            await self._registry.drain(service, instance_id)
        else:
            await self._registry.undrain(service, instance_id)
        record = self._registry.table.get(service, instance_id)
        if record is not None:
            owned = self._registry.table.owned(service, instance_id)
            await tell_instance(self._nc, self._subjects, self._codec, record, owned, self.lease)

    async def _idle(self, service: str, instance_id: str, since: float, deadline: float) -> bool:
        """Wait until an instance runs no call: none in flight from this router, and a
        heartbeat sent after ``since`` says none is running there (a handler outliving its
        caller's deadline still runs after the router stopped waiting for it) and that it
        knows it is draining (so it refuses the direct calls callers send it without the
        router; an instance that takes no direct calls need not say so). False if
        ``deadline`` (loop time) comes first."""
        loop = asyncio.get_running_loop()
        while True:
            left = deadline - loop.time()
            if not await self._tracker.quiesce(service, instance_id, max(left, 0.0)):
                return False
            if self._registry.table.get(service, instance_id) is None:
                return True  # it left
            heard = self._reported.get((service, instance_id))
            record = self._registry.table.get(service, instance_id)
            acknowledged = heard is not None and (heard[2] or not (record and record.direct))
            if heard is not None and heard[0] > since and heard[1] == 0 and acknowledged:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def _handover(
        self, service: str, wait: float, *, required: bool = True
    ) -> AsyncIterator[None]:
        """One handover (drain, promote, planned stop) at a time per service: wait at most
        ``wait`` seconds for the one under way. ``required``: refuse (``ABORTED``) rather
        than queue behind it, so an operation the operator saw time out never runs later;
        otherwise go ahead without the lock (a stopping instance leaves either way)."""
        lock = self._locks.setdefault(service, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), max(wait, 0.01))
        except TimeoutError:
            if required:
                raise IPCError(
                    f"another handover of {service!r} is under way; try again when it is done",
                    code=ErrorCode.ABORTED,
                ) from None
            yield
            return
        try:
            yield
        finally:
            lock.release()

    # --- operators' views and drain (forwarded here from <prefix>.admin.*) ---------------
    def _find(self, instance_id: str, service: str | None) -> InstanceRecord:
        try:
            return find_instance(self._registry.table, instance_id, service)
        except UnknownInstanceError as e:
            where = f" of {service!r}" if service else ""
            raise IPCError(
                f"instance {instance_id!r}{where} is not registered", code=ErrorCode.NOT_FOUND
            ) from e
        except AmbiguousInstanceError as e:
            raise IPCError(str(e), code=ErrorCode.INVALID_ARGUMENT) from e

    async def _drain(self, args: dict[str, Any]) -> dict[str, Any]:
        """Stop routing new calls to an instance; once the calls in flight there are done,
        hand its roles to standbys. Answers within ``timeout`` whether that happened; if
        not, the handover still happens when the last call ends (a planned stop cancels its
        calls and deregisters, which hands over at once)."""
        req: _Drain = self._codec.validate(args, _Drain)
        record = self._find(req.instance_id, req.service)
        service, instance_id = record.service, record.instance_id
        registry = self._registry
        drained = True
        try:
            if req.cancel:
                async with self._handover(service, _DRAIN_LOCK_WAIT):
                    await self._set_draining(service, instance_id, False)
            else:
                async with self._handover(service, _DRAIN_LOCK_WAIT):
                    await self._set_draining(service, instance_id, True)
                wait = min(max(req.timeout, 0.0), MAX_DRAIN) if math.isfinite(req.timeout) else 0.0
                if not req.handover:
                    drained = await self._tracker.quiesce(service, instance_id, wait)
                else:
                    key = (service, instance_id)
                    task = self._handing_over.get(key)
                    if task is None or task.done():
                        task = asyncio.create_task(self._hand_over_when_idle(service, instance_id))
                        self._handing_over[key] = task
                    done, _ = await asyncio.wait({task}, timeout=wait)
                    drained = bool(done)
        except UnknownInstanceError as e:  # it left meanwhile
            raise IPCError(str(e), code=ErrorCode.NOT_FOUND) from e
        current = registry.table.get(service, instance_id) or record
        return DrainResult(
            service=service,
            instance_id=instance_id,
            draining=current.draining,
            drained=drained,
            inflight=self._tracker.count(service, instance_id),
            role=current.role.value,
            owned=list(registry.table.owned(service, instance_id)),
        ).model_dump()

    async def _hand_over_when_idle(self, service: str, instance_id: str) -> None:
        """Wait until no call is in flight to a drained instance, then move its roles."""
        loop = asyncio.get_running_loop()
        since = self._registry.monotonic()
        try:
            while not await self._idle(service, instance_id, since, loop.time() + MAX_DRAIN):
                pass
            async with self._handover(service, MAX_DRAIN, required=False):
                record = self._registry.table.get(service, instance_id)
                if record is not None and record.draining:
                    await self._registry.hand_over(service, instance_id)
        except Exception:  # a background task: log, never lose it silently
            _log.exception("handing over %s.%s failed", service, instance_id)
        finally:
            self._handing_over.pop((service, instance_id), None)

    async def _services(self, args: dict[str, Any]) -> dict[str, Any]:
        views = describe_services(self._registry.table)
        services = [
            ServiceInfo(
                service=v.service,
                mode="load-balanced" if v.load_balanced else "active-standby",
                active=v.active,
                instances=v.instances,
                healthy=v.healthy,
                methods=v.methods,
                claimed_resources=v.claimed_resources,
            ).model_dump()
            for v in views
        ]
        return {"services": services}

    async def _instances(self, args: dict[str, Any]) -> dict[str, Any]:
        req: _Filter = self._codec.validate(args, _Filter)
        try:
            views = describe_instances(
                self._registry.table, req.service, self._registry.monotonic(), self._tracker.count
            )
        except UnknownServiceError as e:
            raise IPCError(
                f"service {e.service!r} is not registered", code=ErrorCode.NOT_FOUND
            ) from e
        rows = [
            InstanceInfo(
                service=v.record.service,
                instance_id=v.record.instance_id,
                role=v.record.role.value,
                health=v.record.health.value,
                epoch=v.record.epoch,
                heartbeat_age_s=v.heartbeat_age_s,
                inflight=v.inflight,
                owned=v.owned,
                standby_for=v.standby_for,
                methods=sorted(v.record.methods),
                draining=v.record.draining,
                registered_at=v.record.registered_at,
            ).model_dump()
            for v in views
        ]
        return {"instances": rows}

    async def _routes(self, args: dict[str, Any]) -> dict[str, Any]:
        req: _Filter = self._codec.validate(args, _Filter)
        try:
            views = describe_routes(self._registry.table, req.service, req.resource)
        except UnknownServiceError as e:
            raise IPCError(
                f"service {e.service!r} is not registered", code=ErrorCode.NOT_FOUND
            ) from e
        rows = [
            RouteInfo(
                service=v.service,
                resource=v.resource,
                kind=v.kind,
                instance=v.instance,
                standbys=v.standbys,
            ).model_dump()
            for v in views
        ]
        return {"routes": rows}

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = self._codec.decode_envelope(msg.data, Heartbeat)
        except CodecError as e:
            _log.debug("ignoring an unreadable heartbeat on %s: %s", msg.subject, e)
            return
        heard = self._registry.monotonic()
        try:
            outcome = await self._registry.heartbeat(
                beat.service, beat.instance_id, beat.session, beat.epoch
            )
        except Exception:  # the heartbeat subscription must outlive any bug
            _log.exception("heartbeat from %s.%s failed", beat.service, beat.instance_id)
            return
        if outcome is HeartbeatOutcome.OK:
            self._reported[(beat.service, beat.instance_id)] = (
                heard,
                beat.inflight,
                beat.draining,
            )
        if not msg.reply:
            return
        if outcome is HeartbeatOutcome.OK:
            record = self._registry.table.get(beat.service, beat.instance_id)
            if record is None:
                return
            # Every answer carries the owned resources (from an index), so an instance
            # that missed a notice is put right by its next heartbeat.
            owned = self._registry.table.owned(beat.service, beat.instance_id)
            state = instance_state(record, owned, lease=self.lease, seq=beat.seq)
            ack = AdminReply(ok=True, result=state.model_dump())
            with contextlib.suppress(nats.errors.Error):
                await self._nc.publish(msg.reply, self._codec.encode_envelope(ack))
            return
        name = f"instance {beat.instance_id!r} of {beat.service!r}"
        if outcome is HeartbeatOutcome.UNKNOWN:
            error = ErrorInfo(
                code=ErrorCode.NOT_FOUND, message=f"{name} is not registered; register again"
            )
        else:
            error = ErrorInfo(
                code=ErrorCode.FAILED_PRECONDITION,
                message=f"{name} is registered by another process now",
            )
        reply = AdminReply(ok=False, error=error)
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(msg.reply, self._codec.encode_envelope(reply))

    async def _sweep(self) -> None:
        """Expire silent instances, unless this router was not listening itself: while its
        connection is down, and after it (or a stall of its own process) ends, instances
        get a grace period instead, since silence it could not hear proves nothing."""
        timeout = self._registry.table.heartbeat_timeout
        interval = timeout / 10
        loop = asyncio.get_running_loop()
        last = loop.time()
        deaf = False
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            stalled, last = now - last > timeout / 2, now
            try:
                if not self._nc.is_connected:
                    deaf = True
                    continue
                if deaf or stalled:
                    deaf = False
                    self._registry.grace_all()
                    continue
                await self._registry.expire()
            except Exception:  # keep sweeping whatever one pass hit
                _log.exception("health sweep failed")

    async def _flush(self) -> None:
        """Save pending changes; back off to 5 s between tries while the store is down."""
        interval = self._registry.table.heartbeat_timeout / 4
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                saved = await self._registry.flush()
            except Exception:
                _log.exception("saving the routing table failed")
                saved = False
            delay = interval if saved else min(delay * 2, 5.0)
