"""Handovers: moving an instance's roles to another without two instances ever running
one role's calls at once.

A handover drains the outgoing instance (no new calls are routed to it, and it is told so
it refuses direct calls), waits until it is idle, then moves the roles:

- *promote*: an operator hands the roles ``instance_id`` can take over to it. The actives
  holding them are drained and, within one deadline, must go idle; otherwise nothing
  changes, and nothing changes either if the roles moved meanwhile (a failover).
- *drain*: an instance stops getting new calls; once its calls are done its roles pass to
  the first healthy standbys (in the background, however long that takes), or, for a
  stopping instance, nothing is handed over and it deregisters.
- *deregister*: a planned stop; whatever roles are left pass on at once.

Idle means: no call in flight from this router (``InflightTracker``), and a heartbeat sent
after the drain began says none is running there (a handler outliving its caller's
deadline still runs after the router stopped waiting) and that the instance knows it is
draining. One handover at a time per service: a drain or promote refuses
(``HandoverBusyError``) rather than queue behind another, so an operation the operator saw
time out never runs later.

What only the instance itself may ask for (deregister, and the drain of a stopping instance,
which hands nothing over) must carry its session (``check_session``): a request without one
is refused (``SessionRequiredError``), one with another session too
(``InstanceReplacedError``), and nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ipc_router.application.errors import (
    DrainTimeoutError,
    HandoverBusyError,
    InstanceReplacedError,
    RolesChangedError,
    SessionRequiredError,
)
from ipc_router.application.inflight import InflightTracker
from ipc_router.application.membership import HeartbeatReports
from ipc_router.application.ports import InstanceNotifier
from ipc_router.application.registry import InstanceRegistry, log_fields
from ipc_router.domain import InstanceRecord, Role, UnknownInstanceError

_log = logging.getLogger("ipc_router.control")

MAX_DRAIN = 300.0
"""The longest a handover waits for the calls in flight to the outgoing instance."""

DRAIN_LOCK_WAIT = 5.0
"""Seconds a drain waits for another handover of its service before it is refused."""

DEREGISTER_LOCK_WAIT = 5.0
"""Seconds a deregistration waits for a handover of its service before it goes ahead."""

_POLL = 0.05
"""Seconds between looks at an instance's heartbeat reports while waiting for it to idle."""


def check_session(record: InstanceRecord, session: str | None, *, required: bool) -> None:
    """Refuse a request made on behalf of ``record``'s process unless it carries that
    process's session (``required``), or carries another one.

    Raises:
        SessionRequiredError: no session, and one is required.
        InstanceReplacedError: a session that is not the one holding the instance now.
    """
    if not session:
        if required and record.session:
            raise SessionRequiredError(record.service, record.instance_id)
        return
    if record.session and not hmac.compare_digest(session.encode(), record.session.encode()):
        raise InstanceReplacedError(record.service, record.instance_id)


def bounded_drain(seconds: float) -> float:
    """A requested wait, kept within 0 and ``MAX_DRAIN`` (0 when it is not a number)."""
    return min(max(seconds, 0.0), MAX_DRAIN) if math.isfinite(seconds) else 0.0


@dataclass(frozen=True, slots=True)
class Promoted:
    """The outcome of a promote."""

    record: InstanceRecord
    """The promoted instance, as it is now."""
    owned: tuple[str, ...]
    """The resources it owns now."""
    demoted: list[str]
    """The instances that held its roles before."""


@dataclass(frozen=True, slots=True)
class Drained:
    """The outcome of a drain."""

    record: InstanceRecord
    """The instance as it is now (as it was found, if it left meanwhile)."""
    drained: bool
    """Whether it went idle and, unless it is stopping, handed every role over within the
    wait."""
    inflight: int
    """Calls still in flight to it from this router."""
    owned: tuple[str, ...]
    """The resources it still owns."""
    reason: str | None = None
    """Why it is not drained (None when it is)."""


class Handovers:
    """The handover use cases (promote, drain, deregister), one at a time per service.

    Args:
        registry: the routing table and its stores.
        tracker: the calls in flight to each instance.
        reports: each instance's last heartbeat report.
        notifier: tells an instance at once that it is draining (or no longer is).
    """

    def __init__(
        self,
        registry: InstanceRegistry,
        tracker: InflightTracker,
        reports: HeartbeatReports,
        notifier: InstanceNotifier,
    ) -> None:
        self._registry = registry
        self._tracker = tracker
        self._reports = reports
        self._notifier = notifier
        self._locks: dict[str, asyncio.Lock] = {}
        self._handing_over: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def close(self) -> None:
        """Cancel the handovers waiting in the background for their instance to idle."""
        for task in list(self._handing_over.values()):
            task.cancel()
        await asyncio.gather(*self._handing_over.values(), return_exceptions=True)

    async def promote(self, service: str, instance_id: str, drain: float) -> Promoted:
        """Hand the roles ``instance_id`` can take over to it: drain the instances that hold
        them, wait (one deadline of ``drain`` seconds for all, the wait for another
        handover included) until they are idle, then move the roles.

        Raises:
            UnknownInstanceError: no such instance.
            HandoverBusyError: another handover of the service outlasted the deadline.
            DrainTimeoutError: an outgoing instance still had calls at the deadline.
            RolesChangedError: the roles moved while the outgoing actives drained.
            NoHealthyInstanceError: the instance cannot take the roles.
        """
        table = self._registry.table
        if table.get(service, instance_id) is None:
            raise UnknownInstanceError(service, instance_id)
        drain = bounded_drain(drain)
        deadline = asyncio.get_running_loop().time() + drain
        async with self.one_at_a_time(service, drain):
            outgoing = table.actives_of(service, instance_id)
            already = {i for i in outgoing if (r := table.get(service, i)) and r.draining}
            try:
                for outgoing_id in outgoing:
                    await self._set_draining(service, outgoing_id, True)
                since = self._registry.monotonic()
                for outgoing_id in outgoing:
                    if not await self._idle(service, outgoing_id, since, deadline):
                        busy = self._tracker.count(service, outgoing_id)
                        raise DrainTimeoutError(service, outgoing_id, busy, drain)
                if set(table.actives_of(service, instance_id)) - set(outgoing):
                    raise RolesChangedError(service)
                record = await self._registry.promote(service, instance_id)
            finally:
                for outgoing_id in outgoing:
                    if outgoing_id not in already and table.get(service, outgoing_id):
                        await self._set_draining(service, outgoing_id, False)
        return Promoted(record, table.owned(record.service, record.instance_id), outgoing)

    async def drain(
        self,
        record: InstanceRecord,
        timeout: float,
        *,
        cancel: bool = False,
        hand_over: bool = True,
        session: str | None = None,
    ) -> Drained:
        """Stop routing new calls to an instance; once the calls in flight there are done,
        hand its roles to standbys. Answers within ``timeout`` whether that happened; if
        its calls were still running, the handover still happens when the last one ends. A
        role no healthy standby can take (every standby is draining, unhealthy, or there is
        none) stays with it, and the answer is not drained, with the reason.

        Args:
            record: the instance, as found.
            timeout: seconds to wait for the outcome (bounded by ``MAX_DRAIN``).
            cancel: route to the instance again instead.
            hand_over: False for a stopping instance: only wait for its calls (it then
                deregisters, which hands its roles over at once).
            session: the instance's session: required when ``hand_over`` is False (only
                the instance stops itself), checked whenever given.

        Raises:
            UnknownInstanceError: it left meanwhile.
            HandoverBusyError: another handover of the service is under way.
            SessionRequiredError, InstanceReplacedError: see ``check_session``.
        """
        check_session(record, session, required=not hand_over)
        service, instance_id = record.service, record.instance_id
        idle = True
        wait = bounded_drain(timeout)
        if cancel:
            async with self.one_at_a_time(service, DRAIN_LOCK_WAIT):
                await self._set_draining(service, instance_id, False)
        else:
            async with self.one_at_a_time(service, DRAIN_LOCK_WAIT):
                await self._set_draining(service, instance_id, True)
            if hand_over:
                task = self._hand_over_task(service, instance_id)
                done, _ = await asyncio.wait({task}, timeout=wait)
                idle = bool(done)
            else:
                idle = await self._tracker.quiesce(service, instance_id, wait)
        table = self._registry.table
        now = table.get(service, instance_id) or record
        owned = table.owned(service, instance_id)
        inflight = self._tracker.count(service, instance_id)
        reason: str | None = None
        if not idle and inflight:
            reason = f"{inflight} call(s) still in flight after {wait:g}s"
        elif not idle:  # its heartbeats still say a handler runs, or none came
            reason = f"it did not report itself idle within {wait:g}s"
        elif hand_over and not cancel:
            reason = _kept_roles(now, owned)
        return Drained(now, reason is None, inflight, owned, reason)

    async def deregister(
        self, service: str, instance_id: str, session: str | None
    ) -> InstanceRecord:
        """Remove an instance (a planned stop), handing over whatever roles it still has.
        Waits for a handover of its service under way, then goes ahead regardless.

        Raises:
            UnknownInstanceError: no such instance.
            SessionRequiredError: no ``session`` came with the request.
            InstanceReplacedError: ``session`` is not the one holding the instance now.
        """
        record = self._registry.table.get(service, instance_id)
        if record is None:
            raise UnknownInstanceError(service, instance_id)
        check_session(record, session, required=True)
        async with self.one_at_a_time(service, DEREGISTER_LOCK_WAIT, required=False):
            await self._registry.deregister(service, instance_id)
        self._reports.forget(service, instance_id)
        return record

    @contextlib.asynccontextmanager
    async def one_at_a_time(
        self, service: str, wait: float, *, required: bool = True
    ) -> AsyncIterator[None]:
        """Hold the service's handover lock, waiting at most ``wait`` seconds for it.

        ``required``: refuse rather than queue behind the handover under way; otherwise go
        ahead without the lock (a stopping instance leaves either way).

        Raises:
            HandoverBusyError: the lock is required and was not free in time.
        """
        lock = self._locks.setdefault(service, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), max(wait, 0.01))
        except TimeoutError:
            if required:
                raise HandoverBusyError(service) from None
            yield
            return
        try:
            yield
        finally:
            lock.release()

    async def _set_draining(self, service: str, instance_id: str, draining: bool) -> None:
        """Drain an instance (or stop draining it), and tell it at once: while draining it
        refuses direct calls, which then go through this router and wait."""
        if draining:
            await self._registry.drain(service, instance_id)
        else:
            await self._registry.undrain(service, instance_id)
        table = self._registry.table
        record = table.get(service, instance_id)
        if record is not None:
            await self._notifier.tell(record, table.owned(service, instance_id))

    async def _idle(self, service: str, instance_id: str, since: float, deadline: float) -> bool:
        """Wait until an instance runs no call (see the module docstring), or it left.
        False if ``deadline`` (loop time) comes first."""
        loop = asyncio.get_running_loop()
        table = self._registry.table
        while True:
            left = deadline - loop.time()
            if not await self._tracker.quiesce(service, instance_id, max(left, 0.0)):
                return False
            record = table.get(service, instance_id)
            if record is None:
                return True  # it left
            report = self._reports.last(service, instance_id)
            if report is not None and report.shows_idle(since, takes_direct_calls=record.direct):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL)

    def _hand_over_task(self, service: str, instance_id: str) -> asyncio.Task[None]:
        """The background handover of a drained instance, started unless one runs."""
        key = (service, instance_id)
        task = self._handing_over.get(key)
        if task is None or task.done():
            task = asyncio.create_task(self._hand_over_when_idle(service, instance_id))
            self._handing_over[key] = task
        return task

    async def _hand_over_when_idle(self, service: str, instance_id: str) -> None:
        """Wait until no call is in flight to a drained instance, then move its roles."""
        loop = asyncio.get_running_loop()
        since = self._registry.monotonic()
        try:
            while not await self._idle(service, instance_id, since, loop.time() + MAX_DRAIN):
                pass
            async with self.one_at_a_time(service, MAX_DRAIN, required=False):
                record = self._registry.table.get(service, instance_id)
                if record is not None and record.draining:
                    await self._registry.hand_over(service, instance_id)
        except Exception:  # a background task: log, never lose it silently
            _log.exception(
                "handing over %s.%s failed",
                service,
                instance_id,
                extra=log_fields(service, instance_id),
            )
        finally:
            self._handing_over.pop((service, instance_id), None)


def _kept_roles(record: InstanceRecord, owned: tuple[str, ...]) -> str | None:
    """Why a drained instance still holds roles after its handover, or None if it holds
    none."""
    kept = [f"the active of {record.service}"] if record.role is Role.ACTIVE else []
    kept += [f"the owner of {resource}" for resource in owned]
    if not kept:
        return None
    return (
        f"no healthy standby that is not draining can take over: "
        f"{record.instance_id} is still {', '.join(kept)}"
    )
