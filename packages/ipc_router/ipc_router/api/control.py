"""Instance control: registration, deregistration, heartbeats and the health sweep.

- ``<prefix>.ctl.register`` / ``<prefix>.ctl.deregister``: request/reply (``AdminRequest``
  with the ``Registration`` fields as ``args``), answered by one router.
- ``<prefix>.hb.<service>.<instance_id>``: heartbeats, seen by the leading router. A heartbeat
  from an instance this router does not know is answered with ``NOT_FOUND`` on the
  heartbeat's reply subject, and the SDK registers again.
- A sweep every quarter of the heartbeat timeout marks silent instances unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
    ErrorCode,
    ErrorInfo,
    Heartbeat,
    Registration,
    RegistrationResult,
    Subjects,
    validate_token,
)
from ipc_router.api.admin import AdminOp, OpsEndpoint
from ipc_router.application.registry import HeartbeatOutcome, InstanceRegistry
from ipc_router.domain import Health, InstanceRecord, Role

_log = logging.getLogger("ipc_router.control")

CONTROL_QUEUE = "ipc-router-control"
"""Queue group of the control subscription: one router answers each registration."""


class _Deregistration(BaseModel):
    service: str
    instance_id: str
    session: str | None = None


def _invalid(message: str) -> IPCError:
    return IPCError(message, code=ErrorCode.INVALID_ARGUMENT)


class ControlAPI:
    """Serves registration and heartbeats, and sweeps for silent instances."""

    def __init__(
        self, nc: NATS, subjects: Subjects, codec: Codec, registry: InstanceRegistry
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._codec = codec
        self._registry = registry
        ops: dict[str, AdminOp] = {"register": self._register, "deregister": self._deregister}
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
                session=reg.session or "",
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
        await self._registry.deregister(req.service, req.instance_id)
        return {"deregistered": record.key}

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = self._codec.decode_envelope(msg.data, Heartbeat)
        except CodecError as e:
            _log.debug("ignoring an unreadable heartbeat on %s: %s", msg.subject, e)
            return
        try:
            outcome = await self._registry.heartbeat(beat.service, beat.instance_id, beat.session)
        except Exception:  # the heartbeat subscription must outlive any bug
            _log.exception("heartbeat from %s.%s failed", beat.service, beat.instance_id)
            return
        if outcome is HeartbeatOutcome.OK or not msg.reply:
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
        interval = self._registry.table.heartbeat_timeout / 4
        while True:
            await asyncio.sleep(interval)
            try:
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
