"""Instance control: registration, deregistration, heartbeats and the health sweep.

- ``<prefix>.ctl.register.<service>`` / ``<prefix>.ctl.deregister.<service>`` (and
  ``drain``): request/reply (``AdminRequest`` with the ``Registration`` fields as
  ``args``), answered by one router. The subject carries the service so that NATS
  permissions can scope it; a request naming another service is refused.
  What only the instance itself may ask for carries its session, and is refused without
  it (``PERMISSION_DENIED``) or with another (``FAILED_PRECONDITION``): deregister, the
  drain of a stopping instance (``handover`` false) and heartbeats. Each refusal costs a
  rate-limited log line.
  A planned stop is ``drain`` then ``deregister``: the instance gets no new calls, its roles
  pass to the first healthy standbys once the calls the router sent there are answered, and
  deregistering hands over whatever is left at once.
- ``<prefix>.ctl.promote`` (``service``, ``instance_id``, ``drain``): an operator's manual
  promotion, handed over the same way (the outgoing actives are drained first); ``drain``,
  ``services``, ``instances``, ``routes``, ``stats``: the operators' views (``stats`` from
  this router's call counters). Any router passes these on
  from ``<prefix>.admin.<op>``.
- ``<prefix>.hb.<service>.<instance_id>``: heartbeats, seen by the leading router. Each is
  answered on its reply subject (the instance's control subject) with the instance's
  ``InstanceState``: role, epoch and a lease counted from when the heartbeat was sent. A
  heartbeat from an instance this router does not know is answered with ``NOT_FOUND``, and
  the SDK registers again.

Each entry point decodes and validates its request, calls a use case (``Membership`` for
registration and heartbeats, ``Handovers`` for deregister, promote and drain, the views for
the operators' queries) and encodes the answer. The health sweep and the saving of pending
changes run beside it (``application/upkeep.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from ipc_client_sdk import CodecError, IPCError
from ipc_client_sdk.protocol import (
    MAX_CONTRACTS_BYTES,
    AdminOp,
    AdminReply,
    Codec,
    DrainResult,
    ErrorCode,
    ErrorInfo,
    Heartbeat,
    InstanceInfo,
    RateLimitedLog,
    Registration,
    RegistrationResult,
    RouteInfo,
    RouterStats,
    ServiceInfo,
    Subjects,
    clip,
    contract_version,
    validate_token,
)
from ipc_router.api.admin import OpHandler, OpsEndpoint
from ipc_router.application.errors import InstanceReplacedError, SessionRequiredError
from ipc_router.application.handover import Handovers
from ipc_router.application.inflight import InflightTracker
from ipc_router.application.membership import HeartbeatAnswer, Membership, RegisterInstance
from ipc_router.application.ports import NoRouterMetrics, RouterMetrics
from ipc_router.application.registry import HeartbeatOutcome, InstanceRegistry
from ipc_router.application.stats import CallStatistics
from ipc_router.application.views import (
    AmbiguousInstanceError,
    describe_instances,
    describe_routes,
    describe_services,
    find_instance,
)
from ipc_router.domain import InstanceRecord, UnknownInstanceError, UnknownServiceError
from ipc_router.infrastructure.nats_events import instance_state

_log = logging.getLogger("ipc_router.control")

CONTROL_QUEUE = "ipc-router-control"

INSTANCE_OPS = frozenset({AdminOp.REGISTER, AdminOp.DEREGISTER, AdminOp.DRAIN})
"""Operations an instance sends for its own service, on ``<prefix>.ctl.<op>.<service>``."""
"""Queue group of the control subscription: one router answers each registration."""


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
    session: str | None = None
    """The instance's session: required when ``handover`` is False."""


class _Filter(BaseModel):
    service: str | None = None
    resource: str | None = None


def _invalid(message: str) -> IPCError:
    return IPCError(message, code=ErrorCode.INVALID_ARGUMENT)


class ControlAPI:
    """Serves registration, handovers, the operators' views and heartbeats.

    Args:
        nc: the router's connection.
        subjects: the subject map.
        codec: the envelope codec.
        registry: the routing table (read by the views).
        membership: the registration and heartbeat use cases.
        handovers: the deregister, promote and drain use cases.
        tracker: the calls in flight to each instance (shown by the views).
        lease: the lease, in seconds, granted to an instance with each answer.
        in_term: whether this router's leadership term still runs: heartbeats are not
            answered after it ended (an answer would renew the instance's lease).
        stats: the call counters' figures (``stats``; None: the operation is not served).
    """

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        codec: Codec,
        registry: InstanceRegistry,
        membership: Membership,
        handovers: Handovers,
        tracker: InflightTracker,
        lease: float,
        *,
        in_term: Callable[[], bool] = lambda: True,
        stats: CallStatistics | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self._nc = nc
        self._metrics = metrics or NoRouterMetrics()
        self._subjects = subjects
        self._codec = codec
        self._registry = registry
        self._membership = membership
        self._handovers = handovers
        self._tracker = tracker
        self.lease = lease
        self._in_term = in_term
        ops: dict[str, OpHandler] = {
            AdminOp.REGISTER: self._register,
            AdminOp.DEREGISTER: self._deregister,
            AdminOp.PROMOTE: self._promote,
            AdminOp.DRAIN: self._drain,
            AdminOp.SERVICES: self._services,
            AdminOp.INSTANCES: self._instances,
            AdminOp.ROUTES: self._routes,
        }
        if stats is not None:
            ops[AdminOp.STATS] = lambda args: self._stats(stats, args)
        self._endpoint = OpsEndpoint(
            nc, subjects.control_all, CONTROL_QUEUE, codec, ops, scoped=INSTANCE_OPS
        )
        self._heartbeats: Subscription | None = None
        self._problems = RateLimitedLog(_log)  # what instances cause: a flood costs few lines

    async def start(self) -> None:
        """Open the control and heartbeat subscriptions."""
        await self._endpoint.start()
        self._heartbeats = await self._nc.subscribe(
            self._subjects.heartbeat_all, cb=self._on_heartbeat, pending_msgs_limit=100_000
        )

    async def stop(self) -> None:
        """Close both subscriptions."""
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
        outcome = await self._membership.register(
            RegisterInstance(
                service=reg.service,
                instance_id=reg.instance_id,
                session=reg.session,
                resources=tuple(reg.resources),
                methods=tuple(reg.methods),
                direct_methods=tuple(reg.direct_methods),
                direct=reg.direct,
                load_balanced=reg.load_balanced,
                contracts=self._contracts_of(reg),
            )
        )
        record = outcome.record
        self._warn_of_conflicts(record)
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

    def _contracts_of(self, reg: Registration) -> dict[str, dict[str, Any]] | None:
        """The registration's contracts as stored, each with its version; None when it
        carries none, or more than ``MAX_CONTRACTS_BYTES`` (logged: the instance is
        registered all the same)."""
        if reg.contracts is None:
            return None
        stored = {
            method: {**c.model_dump(exclude_none=True), "version": contract_version(c)}
            for method, c in reg.contracts.items()
            if method in reg.methods
        }
        size = sum(len(json.dumps(c, default=str)) for c in stored.values())
        if size > MAX_CONTRACTS_BYTES + 64 * len(stored):  # room for the versions added
            self._problems.warning(
                "contracts-too-large",
                "%s.%s registered %d bytes of contracts, more than %d; none kept",
                clip(reg.service),
                clip(reg.instance_id),
                size,
                MAX_CONTRACTS_BYTES,
            )
            return None
        return stored

    def _warn_of_conflicts(self, record: InstanceRecord) -> None:
        """A half-upgraded service: say which of its instances registered which contract."""
        for conflict in self._membership.contract_conflicts(record):
            self._problems.warning(
                f"contract-conflict:{record.service}.{conflict.method}",
                "instances of %s registered different contracts for %s: %s has version %s, "
                "%s (see 'ipc describe %s %s')",
                clip(record.service),
                clip(conflict.method),
                clip(record.instance_id),
                conflict.version,
                clip(", ".join(f"{i} has {v}" for i, v in conflict.others)),
                clip(record.service),
                clip(conflict.method),
            )

    async def _deregister(self, args: dict[str, Any]) -> dict[str, Any]:
        req: _Deregistration = self._codec.validate(args, _Deregistration)
        try:
            record = await self._handovers.deregister(req.service, req.instance_id, req.session)
        except (SessionRequiredError, InstanceReplacedError) as e:
            self._refused(AdminOp.DEREGISTER, req.service, req.instance_id, e)
            raise
        return {"deregistered": record.key}

    async def _promote(self, args: dict[str, Any]) -> dict[str, Any]:
        """Hand the roles ``instance_id`` can take over to it (``Handovers.promote``)."""
        req: _Promotion = self._codec.validate(args, _Promotion)
        promoted = await self._handovers.promote(req.service, req.instance_id, req.drain)
        record = promoted.record
        return {
            "service": record.service,
            "instance_id": record.instance_id,
            "role": record.role.value,
            "epoch": record.epoch,
            "owned": list(promoted.owned),
            "demoted": promoted.demoted,
        }

    async def _drain(self, args: dict[str, Any]) -> dict[str, Any]:
        """Drain an instance, and hand its roles over once idle (``Handovers.drain``)."""
        req: _Drain = self._codec.validate(args, _Drain)
        found = self._find(req.instance_id, req.service)
        try:
            drained = await self._handovers.drain(
                found, req.timeout, cancel=req.cancel, hand_over=req.handover, session=req.session
            )
        except (SessionRequiredError, InstanceReplacedError) as e:
            self._refused(AdminOp.DRAIN, found.service, found.instance_id, e)
            raise
        return DrainResult(
            service=found.service,
            instance_id=found.instance_id,
            draining=drained.record.draining,
            drained=drained.drained,
            inflight=drained.inflight,
            role=drained.record.role.value,
            owned=list(drained.owned),
            reason=drained.reason,
        ).model_dump()

    def _refused(self, op: str, service: str, instance_id: str, error: Exception) -> None:
        """Log (rate-limited, fields clipped) an instance operation refused for its session."""
        self._problems.warning(
            f"refused-{op}",
            "refused %s of %s.%s: %s",
            op,
            clip(service),
            clip(instance_id),
            clip(error),
        )

    # --- operators' views (forwarded here from <prefix>.admin.*) -------------------------
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

    async def _stats(self, stats: CallStatistics, args: dict[str, Any]) -> dict[str, Any]:
        req: _Filter = self._codec.validate(args, _Filter)
        report = stats.report(req.service)
        return RouterStats.model_validate(asdict(report)).model_dump()

    # --- heartbeats -----------------------------------------------------------------------
    async def _on_heartbeat(self, msg: Msg) -> None:
        if not self._in_term():
            return  # another router may lead by now: it answers
        try:
            beat = self._codec.decode_envelope(msg.data, Heartbeat)
        except CodecError as e:
            self._problems.log(
                logging.DEBUG,
                "unreadable-heartbeat",
                "ignoring an unreadable heartbeat on %s: %s",
                clip(msg.subject),
                clip(e),
            )
            return
        if not self._heartbeat_is_its_own(msg, beat):
            return
        try:
            answer = await self._membership.heartbeat(
                beat.service,
                beat.instance_id,
                session=beat.session,
                epoch=beat.epoch,
                running=beat.inflight,
                draining=beat.draining,
            )
        except Exception:  # the heartbeat subscription must outlive any bug
            self._problems.exception(
                "heartbeat",
                "heartbeat from %s.%s failed",
                clip(beat.service),
                clip(beat.instance_id),
            )
            return
        if answer.outcome is HeartbeatOutcome.OK and beat.calls:
            # Counted only from the process that holds the instance id (its session).
            self._metrics.calls_reported(beat.service, beat.calls)
        if answer.outcome in (HeartbeatOutcome.REFUSED, HeartbeatOutcome.REPLACED):
            why = "no session" if answer.outcome is HeartbeatOutcome.REFUSED else "another session"
            self._problems.warning(
                f"heartbeat-{answer.outcome.value}",
                "ignoring a heartbeat of %s.%s with %s",
                clip(beat.service),
                clip(beat.instance_id),
                why,
            )
        if not msg.reply or not beat.session:
            return
        if msg.reply != self._subjects.instance_control(
            beat.service, beat.instance_id, beat.session
        ):
            # The answer goes to the instance's own control subject only: never a deputy
            # that publishes an instance's state wherever a heartbeat's reply points.
            self._problems.warning(
                "heartbeat-reply",
                "not answering a heartbeat of %s.%s on %s: not its control subject",
                clip(beat.service),
                clip(beat.instance_id),
                clip(msg.reply),
            )
            return
        reply = self._heartbeat_reply(beat, answer)
        if reply is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.publish(msg.reply, self._codec.encode_envelope(reply))

    def _heartbeat_is_its_own(self, msg: Msg, beat: Heartbeat) -> bool:
        """Whether a heartbeat came on its instance's own subject (``<p>.hb.<service>.<id>``).

        NATS permissions scope who may publish there (``<p>.hb.NAME.*``); a body naming
        another service or instance than its subject is a forgery (it could keep a dead
        instance of another service looking healthy), and is dropped.
        """
        try:
            own = self._subjects.heartbeat(beat.service, beat.instance_id)
        except ValueError:
            own = None
        if msg.subject == own:
            return True
        self._problems.warning(
            "heartbeat-subject",
            "ignoring a heartbeat on %s that names %s.%s",
            clip(msg.subject),
            clip(beat.service),
            clip(beat.instance_id),
        )
        return False

    def _heartbeat_reply(self, beat: Heartbeat, answer: HeartbeatAnswer) -> AdminReply | None:
        """The instance's state (with its owned resources, so that an instance that missed
        a notice is put right), or why it must register again or stop; None when it left
        meanwhile."""
        if answer.outcome is HeartbeatOutcome.OK:
            if answer.record is None:
                return None
            state = instance_state(answer.record, answer.owned, lease=self.lease, seq=beat.seq)
            return AdminReply(ok=True, result=state.model_dump())
        name = f"instance {beat.instance_id!r} of {beat.service!r}"
        if answer.outcome is HeartbeatOutcome.UNKNOWN:
            error = ErrorInfo(
                code=ErrorCode.NOT_FOUND, message=f"{name} is not registered; register again"
            )
        elif answer.outcome is HeartbeatOutcome.REFUSED:
            error = ErrorInfo(
                code=ErrorCode.PERMISSION_DENIED,
                message=f"a heartbeat of {name} must carry its session",
            )
        else:
            error = ErrorInfo(
                code=ErrorCode.FAILED_PRECONDITION,
                message=f"{name} is registered by another process now",
            )
        return AdminReply(ok=False, error=error)
