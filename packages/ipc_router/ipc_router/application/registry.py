"""The registry use cases: register, deregister, heartbeat, sweep, route.

The routing table in memory is what the leading router decides with; the repositories keep
a copy of it (records, claims, assignments) so that a restarted or new leader resumes where
the last one stopped. Memory changes first and the copy follows: a write that fails is
remembered and retried by the next sweep (every quarter of the heartbeat timeout), always
with the table's state *at that time*, so the copy converges on the table and a failed
write never leaves the table half-changed. A leader that dies with writes outstanding
loses only those; instances it forgot register again on their next heartbeat.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Collection

from ipc_router.application.errors import StoreUnavailableError
from ipc_router.application.ports import Clock, InstanceRepository, RouteRepository
from ipc_router.domain import InstanceRecord, Registered, Route, RoutingTable

_log = logging.getLogger("ipc_router.registry")


class HeartbeatOutcome(enum.StrEnum):
    """What a heartbeat told the registry."""

    OK = "ok"
    UNKNOWN = "unknown"
    """No such instance: the sender should register again."""
    REPLACED = "replaced"
    """Another process holds the instance id now: the sender must stop serving."""


class InstanceRegistry:
    """Owns the routing table and keeps its copy in the repositories."""

    def __init__(
        self,
        table: RoutingTable,
        instances: InstanceRepository,
        routes: RouteRepository,
        clock: Clock,
    ) -> None:
        self.table = table
        self._instances = instances
        self._routes = routes
        self._clock = clock
        self._dirty_records: set[tuple[str, str]] = set()
        self._dirty_claims: set[tuple[str, str]] = set()
        self._dirty_assignments: set[tuple[str, str]] = set()

    def now(self) -> float:
        """The registry's clock."""
        return self._clock.now()

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
        self.table.restore(records, saved.claims, saved.assignments, self._clock.now())
        return len(records)

    async def register(self, record: InstanceRecord) -> Registered:
        """Register an instance with its claims, and save them.

        Raises:
            InstanceConflictError: a live process already holds the instance id.
        """
        service = record.service
        before = self.table.assignments(service)
        outcome = self.table.register(record, self._clock.now())
        touched = set(outcome.record.resources)
        if outcome.replaced is not None:
            touched |= set(outcome.replaced.resources)
        await self._write(
            records={(service, record.instance_id)},
            claims={(service, resource) for resource in touched},
            assignments=self._assignment_changes(service, before),
        )
        _log.info(
            "registered %s as %s (claims %d, standby for %d)",
            outcome.record.key,
            outcome.record.role.value,
            len(outcome.claimed),
            len(outcome.standby_for),
        )
        return outcome

    async def deregister(self, service: str, instance_id: str) -> InstanceRecord | None:
        """Remove an instance; return its last record, or None when it was not registered."""
        before = self.table.assignments(service)
        record = self.table.deregister(service, instance_id)
        if record is None:
            return None
        records = {(service, instance_id)}
        promoted = self.table.fill_vacancy(service)
        if promoted is not None:
            _log.info("%s is active now", promoted.key)
            records.add((service, promoted.instance_id))
        await self._write(
            records=records,
            claims={(service, resource) for resource in record.resources},
            assignments=self._assignment_changes(service, before),
        )
        _log.info("deregistered %s", record.key)
        return record

    async def heartbeat(
        self, service: str, instance_id: str, session: str | None
    ) -> HeartbeatOutcome:
        """Note a heartbeat, and say whether its sender is the registered process."""
        record = self.table.get(service, instance_id)
        if record is None:
            return HeartbeatOutcome.UNKNOWN
        if session and record.session and session != record.session:
            return HeartbeatOutcome.REPLACED
        changed = self.table.heartbeat(service, instance_id, session, self._clock.now())
        if changed is not None:
            _log.info("instance %s is healthy again", changed.key)
            await self._write(records={(service, instance_id)})
        return HeartbeatOutcome.OK

    async def expire(self) -> list[InstanceRecord]:
        """The sweep: mark silent instances unhealthy, remove long-dead ones, and retry the
        writes that failed before. Returns the instances that turned unhealthy."""
        now = self._clock.now()
        expired = self.table.expire(now)
        for record in expired:
            _log.warning(
                "instance %s missed heartbeats for %.1fs; unhealthy",
                record.key,
                self.table.heartbeat_timeout,
            )
            self._dirty_records.add((record.service, record.instance_id))
        for record in self.table.reapable(now):
            _log.warning(
                "instance %s silent for %.0fs; removed with its claims",
                record.key,
                self.table.reap_after,
            )
            await self.deregister(record.service, record.instance_id)
        await self.flush()
        return expired

    async def mark_unreachable(self, service: str, instance_id: str) -> None:
        """An instance did not take a call delivered to it: stop routing to it now."""
        record = self.table.mark_unhealthy(service, instance_id)
        if record is not None:
            _log.warning("instance %s is not listening on its inbox; unhealthy", record.key)
            await self._write(records={(service, instance_id)})

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

    async def flush(self) -> None:
        """Retry every change not saved yet, from the table's current state. Never raises."""
        await self._write(
            records=set(self._dirty_records),
            claims=set(self._dirty_claims),
            assignments=set(self._dirty_assignments),
        )

    async def _write(
        self,
        *,
        records: Collection[tuple[str, str]] = (),
        claims: Collection[tuple[str, str]] = (),
        assignments: Collection[tuple[str, str]] = (),
    ) -> None:
        """Save these keys as the table has them now; remember the ones that fail."""
        for service, instance_id in sorted(records):
            record = self.table.get(service, instance_id)
            write = (
                self._instances.put(record)
                if record is not None
                else self._instances.delete(service, instance_id)
            )
            await self._save(self._dirty_records, (service, instance_id), write)
        for service, resource in sorted(claims):
            claimants = self.table.claims(service).get(resource, [])
            write = self._routes.save_claim(service, resource, claimants)
            await self._save(self._dirty_claims, (service, resource), write)
        for service, resource in sorted(assignments):
            target = self.table.assignments(service).get(resource)
            write = self._routes.save_assignment(service, resource, target)
            await self._save(self._dirty_assignments, (service, resource), write)

    @staticmethod
    async def _save(
        dirty: set[tuple[str, str]], key: tuple[str, str], write: Awaitable[None]
    ) -> None:
        try:
            await write
        except StoreUnavailableError as e:
            dirty.add(key)
            _log.warning("%s not saved yet (%s); the sweep retries", ".".join(key), e)
            return
        dirty.discard(key)

    def _assignment_changes(self, service: str, before: dict[str, str]) -> set[tuple[str, str]]:
        after = self.table.assignments(service)
        return {
            (service, resource)
            for resource, instance_id in before.items()
            if after.get(resource) != instance_id
        }
