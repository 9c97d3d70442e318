"""The registry use cases: register, deregister, heartbeat, sweep, route.

The routing table in memory is what the leading router decides with; the repositories keep
a copy of it (records, claims, assignments) so that a restarted or new leader resumes where
the last one stopped. Memory changes first and the copy follows: a write that fails is
remembered, and ``flush`` (run in the background with backoff) retries it with the table's
state *at that time*, so the copy converges on the table and a failed write never leaves
the table half-changed. While the store is down nothing waits on it. A leader that dies
with writes outstanding loses only those; instances it forgot register again on their next
heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Collection

from ipc_router.application.errors import StoreUnavailableError
from ipc_router.application.ports import (
    Clock,
    DiscardEvents,
    EventSink,
    InstanceRepository,
    RouteRepository,
)
from ipc_router.domain import (
    InstanceEvent,
    InstanceRecord,
    Registered,
    Route,
    RoutingTable,
)

_log = logging.getLogger("ipc_router.registry")

_Keys = tuple[set[tuple[str, str]], set[tuple[str, str]], set[tuple[str, str]]]
"""Records, claims and assignments to save: (service, instance_id or resource) each."""


class HeartbeatOutcome(enum.StrEnum):
    """What a heartbeat told the registry."""

    OK = "ok"
    UNKNOWN = "unknown"
    """No such instance: the sender should register again."""
    REPLACED = "replaced"
    """Another process holds the instance id now: the sender must stop serving."""
    REFUSED = "refused"
    """It carried no session: nothing proves it comes from the registered process."""


class InstanceRegistry:
    """Owns the routing table and keeps its copy in the repositories."""

    def __init__(
        self,
        table: RoutingTable,
        instances: InstanceRepository,
        routes: RouteRepository,
        clock: Clock,
        events: EventSink | None = None,
    ) -> None:
        self.table = table
        self._events: EventSink = events or DiscardEvents()
        self._changed = asyncio.Event()
        self._instances = instances
        self._routes = routes
        self._clock = clock
        self._dirty_records: set[tuple[str, str]] = set()
        self._dirty_claims: set[tuple[str, str]] = set()
        self._dirty_assignments: set[tuple[str, str]] = set()
        self._store_down = False

    def now(self) -> float:
        """The registry's clock."""
        return self._clock.now()

    def monotonic(self) -> float:
        """The registry's monotonic clock: what heartbeat times are measured on."""
        return self._clock.monotonic()

    @property
    def pending_writes(self) -> int:
        """Changes not yet saved (retried by the next sweep)."""
        return len(self._dirty_records) + len(self._dirty_claims) + len(self._dirty_assignments)

    async def restore(self) -> int:
        """Load what an earlier leader saved; return how many instances were restored.

        Raises:
            StoreUnavailableError: the stores did not answer.
        """
        records = await self._instances.list_instances()
        saved = await self._routes.load()
        self.table.restore(records, saved.claims, saved.assignments, self._clock.monotonic())
        self._settle()  # a role the saved state left vacant was filled: save and announce it
        return len(records)

    async def wait_changed(self, timeout: float) -> None:
        """Wait until the table changes (roles, health, instances) or ``timeout`` passes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _settle(self) -> set[tuple[str, str]]:
        """After a table change: mark role changes for saving, announce them, and wake the
        calls waiting for a change. Returns the claims to save."""
        claims: set[tuple[str, str]] = set()
        for event in self.table.take_events():
            self._dirty_records.add((event.service, event.instance_id))
            if event.resource is not None:
                claims.add((event.service, event.resource))
            _log.info(
                "%s.%s is %s of %s now (epoch %d, %s)",
                event.service,
                event.instance_id,
                event.role.value,
                event.resource if event.resource is not None else "the service",
                event.epoch,
                event.reason,
                extra=log_fields(event.service, event.instance_id),
            )
            self._events.emit(event)
        self._dirty_claims |= claims
        self._changed.set()
        self._changed = asyncio.Event()
        return claims

    async def register(self, record: InstanceRecord) -> Registered:
        """Register an instance with its claims, and save them.

        Raises:
            InstanceConflictError: a live process already holds the instance id.
        """
        service = record.service
        before = self.table.assignments(service)
        outcome = self.table.register(record, self._clock.monotonic())
        touched = set(outcome.record.resources)
        if outcome.replaced is not None:
            touched |= set(outcome.replaced.resources)
        self._settle()
        self._events.emit(InstanceEvent("registry", service, record.instance_id, "registered"))
        await self._save(
            {(service, record.instance_id)},
            {(service, resource) for resource in touched},
            self._assignment_changes(service, before),
        )
        _log.info(
            "registered %s as %s (claims %d, standby for %d)",
            outcome.record.key,
            outcome.record.role.value,
            len(outcome.claimed),
            len(outcome.standby_for),
            extra=log_fields(outcome.record.service, outcome.record.instance_id),
        )
        return outcome

    async def deregister(self, service: str, instance_id: str) -> InstanceRecord | None:
        """Remove an instance; return its last record, or None when it was not registered."""
        record, keys = self._remove(service, instance_id)
        if record is not None:
            self._events.emit(InstanceEvent("registry", service, instance_id, "deregistered"))
            await self._save(*keys)
            _log.info("deregistered %s", record.key, extra=log_fields(service, instance_id))
        return record

    async def drain(self, service: str, instance_id: str) -> InstanceRecord:
        """Stop routing new calls to an instance (the start of a handover), and save that.

        Raises:
            UnknownInstanceError: no such instance.
        """
        record = self.table.drain(service, instance_id)
        self._events.emit(InstanceEvent("registry", service, instance_id, "draining"))
        _log.info("draining %s", record.key, extra=log_fields(service, instance_id))
        self._settle()
        await self._save({(service, instance_id)})
        return record

    async def undrain(self, service: str, instance_id: str) -> None:
        """Route to an instance again (a handover called off or completed)."""
        before = self.table.get(service, instance_id)
        self.table.undrain(service, instance_id, self._clock.monotonic())
        if before is not None and before.draining:
            self._events.emit(InstanceEvent("registry", service, instance_id, "undrained"))
        self._settle()  # it may have taken a role nobody held
        await self._save({(service, instance_id)})

    async def hand_over(self, service: str, instance_id: str) -> InstanceRecord:
        """Move a drained instance's roles to the first healthy standby of each.

        Raises:
            UnknownInstanceError: no such instance.
        """
        record = self.table.hand_over(service, instance_id, self._clock.monotonic())
        self._settle()
        await self._save()
        return record

    async def promote(self, service: str, instance_id: str) -> InstanceRecord:
        """Make an instance the active of its service and of every resource it claims.

        The caller drains the outgoing actives first (``table.actives_of``).

        Raises:
            UnknownInstanceError, NoHealthyInstanceError.
        """
        record = self.table.promote(service, instance_id, self._clock.monotonic())
        self._settle()
        await self._save()
        return record

    async def heartbeat(
        self, service: str, instance_id: str, session: str | None, epoch: int | None = None
    ) -> HeartbeatOutcome:
        """Note a heartbeat, and say whether its sender is the registered process (only a
        heartbeat carrying the instance's session keeps it healthy)."""
        record = self.table.get(service, instance_id)
        if record is None:
            return HeartbeatOutcome.UNKNOWN
        if record.session and not session:
            return HeartbeatOutcome.REFUSED
        if session and record.session and session != record.session:
            return HeartbeatOutcome.REPLACED
        changed = self.table.heartbeat(
            service, instance_id, session, self._clock.monotonic(), epoch=epoch
        )
        if changed is None and epoch is not None and epoch > record.epoch:
            self._settle()  # a resync: save and announce the new epoch
            await self._save()
        if changed is not None:
            _log.info(
                "instance %s is healthy again",
                changed.key,
                extra=log_fields(service, instance_id),
            )
            self._events.emit(InstanceEvent("health", service, instance_id, "healthy"))
            self._settle()
            await self._save({(service, instance_id)})
        return HeartbeatOutcome.OK

    async def expire(self) -> list[InstanceRecord]:
        """The sweep: mark silent instances unhealthy and remove long-dead ones.

        It does no I/O (the changes are saved by ``flush``), so no heartbeat or
        registration can interleave with it. Returns the instances that turned unhealthy.
        """
        now = self._clock.monotonic()
        expired = self.table.expire(now)
        for record in expired:
            _log.warning(
                "instance %s missed heartbeats for %.1fs; unhealthy",
                record.key,
                self.table.heartbeat_timeout,
                extra=log_fields(record.service, record.instance_id),
            )
            self._dirty_records.add((record.service, record.instance_id))
            self._events.emit(
                InstanceEvent("health", record.service, record.instance_id, "unhealthy")
            )
        for record in self.table.reapable(now):
            _log.warning(
                "instance %s silent for %.0fs; removed with its claims",
                record.key,
                self.table.reap_after,
                extra=log_fields(record.service, record.instance_id),
            )
            _, (records, claims, assignments) = self._remove(record.service, record.instance_id)
            self._events.emit(
                InstanceEvent("registry", record.service, record.instance_id, "reaped")
            )
            self._dirty_records |= records
            self._dirty_claims |= claims
            self._dirty_assignments |= assignments
        self._settle()
        return expired

    def _remove(self, service: str, instance_id: str) -> tuple[InstanceRecord | None, _Keys]:
        """Take an instance out of the table; return it and the keys to save."""
        before = self.table.assignments(service)
        held = {
            r for r, claimants in self.table.claims(service).items() if instance_id in claimants
        }
        record = self.table.deregister(service, instance_id, self._clock.monotonic())
        if record is None:
            return None, (set(), set(), set())
        records = {(service, instance_id)}
        claims = self._settle() | {(service, resource) for resource in held | set(record.resources)}
        return record, (records, claims, self._assignment_changes(service, before))

    def grace_all(self) -> None:
        """The router was not listening (cut off from NATS, or stalled): give every instance
        two heartbeat timeouts to be heard from before anything can expire."""
        grace = 2 * self.table.heartbeat_timeout
        self.table.grace_all(self._clock.monotonic(), grace)
        _log.warning("the router was not listening; no instance expires for %.1fs", grace)

    async def mark_unreachable(self, service: str, instance_id: str) -> None:
        """An instance did not take a call delivered to it: stop routing to it now."""
        record = self.table.mark_unhealthy(service, instance_id)
        if record is not None:
            _log.warning(
                "instance %s is not listening on its inbox; unhealthy",
                record.key,
                extra=log_fields(service, instance_id),
            )
            self._events.emit(InstanceEvent("health", service, instance_id, "unhealthy"))
            self._settle()
            await self._save({(service, instance_id)})

    async def route(self, service: str, method: str, resource_id: str | None) -> Route:
        """Choose the instance for a call, saving a new sticky assignment if one was made.

        The save waits for the store (at most its 2 s timeout, once per new resource); if
        it fails the call is routed all the same and the save is retried by the sweep.

        Raises:
            RoutingError: the call cannot be routed (the subclass says why).
        """
        route = self.table.route(service, method, resource_id)
        if route.new_assignment is not None:
            await self._write(assignments={(service, route.new_assignment)})
        return route

    async def flush(self) -> bool:
        """Retry the changes not saved yet, from the table's current state.

        Returns True when nothing is left pending. Never raises.
        """
        pending = self.pending_writes
        if not pending:
            return True
        self._store_down = False  # this is the retry: try the store again
        await self._write(
            set(self._dirty_records), set(self._dirty_claims), set(self._dirty_assignments)
        )
        if self.pending_writes:
            return False
        _log.info("the stores answer again; %d pending changes saved", pending)
        return True

    async def _save(
        self,
        records: Collection[tuple[str, str]] = (),
        claims: Collection[tuple[str, str]] = (),
        assignments: Collection[tuple[str, str]] = (),
    ) -> None:
        """Save these keys, and the records and claims ``_settle`` marked (role changes)."""
        await self._write(
            {*records, *self._dirty_records}, {*claims, *self._dirty_claims}, assignments
        )

    async def _write(
        self,
        records: Collection[tuple[str, str]] = (),
        claims: Collection[tuple[str, str]] = (),
        assignments: Collection[tuple[str, str]] = (),
    ) -> None:
        """Save these keys as the table has them now.

        At the first failure, this and every remaining key are left pending without being
        tried, and so is every write until ``flush`` succeeds: while the store is down, a
        registration or a new route costs no store timeout at all.
        """
        jobs: list[tuple[set[tuple[str, str]], tuple[str, str], Callable[[], Awaitable[None]]]] = []
        for key in sorted(records):
            jobs.append((self._dirty_records, key, self._record_writer(key)))
        for key in sorted(claims):
            jobs.append((self._dirty_claims, key, self._claim_writer(key)))
        for key in sorted(assignments):
            jobs.append((self._dirty_assignments, key, self._assignment_writer(key)))
        for dirty, key, write in jobs:
            if self._store_down:
                dirty.add(key)
                continue
            try:
                await write()
            except StoreUnavailableError as e:
                self._store_down = True
                dirty.add(key)
                _log.warning("the stores do not answer (%s); changes are saved later", e)
                continue
            dirty.discard(key)

    def _record_writer(self, key: tuple[str, str]) -> Callable[[], Awaitable[None]]:
        service, instance_id = key
        record = self.table.get(service, instance_id)
        if record is None:
            return lambda: self._instances.delete(service, instance_id)
        return lambda: self._instances.put(record)

    def _claim_writer(self, key: tuple[str, str]) -> Callable[[], Awaitable[None]]:
        service, resource = key
        claimants = self.table.claims(service).get(resource, [])
        return lambda: self._routes.save_claim(service, resource, claimants)

    def _assignment_writer(self, key: tuple[str, str]) -> Callable[[], Awaitable[None]]:
        service, resource = key
        target = self.table.assignments(service).get(resource)
        return lambda: self._routes.save_assignment(service, resource, target)

    def _assignment_changes(self, service: str, before: dict[str, str]) -> set[tuple[str, str]]:
        after = self.table.assignments(service)
        return {
            (service, resource)
            for resource, instance_id in before.items()
            if after.get(resource) != instance_id
        }


def log_fields(service: str, instance_id: str) -> dict[str, str]:
    """An instance's structured log fields (``extra=``: JSON logs show them as keys)."""
    return {"service": service, "instance": instance_id}
