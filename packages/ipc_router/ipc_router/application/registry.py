"""The registry use cases: register, deregister, heartbeat, expire, route.

The routing table in memory is what this router decides with; the repositories keep its
persistent part (records, claims, assignments) so that a restarted router resumes where it
stopped. A failed write of a routing decision is logged, not fatal: routing keeps working on the
table while JetStream is briefly unavailable, and only a restart in that window would
forget the decision.
"""

from __future__ import annotations

import enum
import logging

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
    """Owns the routing table and keeps its persistent part in the repositories."""

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

    def now(self) -> float:
        """The registry's clock."""
        return self._clock.now()

    async def restore(self) -> int:
        """Load what an earlier run saved; return how many instances were restored.

        Raises:
            StoreUnavailableError: the stores did not answer.
        """
        records = await self._instances.list_instances()
        saved = await self._routes.load()
        self.table.restore(records, saved.claims, saved.assignments, self._clock.now())
        return len(records)

    async def register(self, record: InstanceRecord) -> Registered:
        """Register an instance and persist it with its claims.

        Raises:
            InstanceConflictError: a live process already holds the instance id.
            StoreUnavailableError: the registration could not be saved (the caller retries).
        """
        service = record.service
        before = self.table.assignments(service)
        outcome = self.table.register(record, self._clock.now())
        await self._instances.put(outcome.record)
        claims = self.table.claims(service)
        touched = set(outcome.record.resources)
        if outcome.replaced is not None:
            touched |= set(outcome.replaced.resources)
        for resource in sorted(touched):
            await self._routes.save_claim(service, resource, claims.get(resource, []))
        await self._save_assignment_changes(service, before)
        _log.info(
            "registered %s as %s (claims %d, standby for %d)",
            outcome.record.key,
            outcome.record.role.value,
            len(outcome.claimed),
            len(outcome.standby_for),
        )
        return outcome

    async def deregister(self, service: str, instance_id: str) -> InstanceRecord | None:
        """Remove an instance; return its last record, or None when it was not registered.

        Raises:
            StoreUnavailableError: the removal could not be saved.
        """
        before = self.table.assignments(service)
        record = self.table.deregister(service, instance_id)
        if record is None:
            return None
        await self._instances.delete(service, instance_id)
        claims = self.table.claims(service)
        for resource in record.resources:
            await self._routes.save_claim(service, resource, claims.get(resource, []))
        await self._save_assignment_changes(service, before)
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
            await self._save_quietly(changed)
        return HeartbeatOutcome.OK

    async def expire(self) -> list[InstanceRecord]:
        """Mark silent instances unhealthy and save that; return them."""
        expired = self.table.expire(self._clock.now())
        for record in expired:
            _log.warning(
                "instance %s missed heartbeats for %.1fs; unhealthy",
                record.key,
                self.table.heartbeat_timeout,
            )
            await self._save_quietly(record)
        return expired

    async def mark_unreachable(self, service: str, instance_id: str) -> None:
        """An instance did not take a call delivered to it: stop routing to it now."""
        record = self.table.mark_unhealthy(service, instance_id)
        if record is not None:
            _log.warning("instance %s is not listening on its inbox; unhealthy", record.key)
            await self._save_quietly(record)

    async def route(self, service: str, method: str, resource_id: str | None) -> Route:
        """Choose the instance for a call, saving a new sticky assignment if one was made.

        Saving waits for the store (at most its 2 s timeout, once per new resource); a
        failed save is logged and the call is routed all the same.

        Raises:
            RoutingError: the call cannot be routed (the subclass says why).
        """
        route = self.table.route(service, method, resource_id)
        if route.new_assignment is not None:
            try:
                await self._routes.save_assignment(service, route.new_assignment, route.instance_id)
            except StoreUnavailableError as e:
                # The table in memory holds the assignment; only a restart would forget it.
                _log.warning("assignment of %s not saved: %s", route.new_assignment, e)
        return route

    async def _save_assignment_changes(self, service: str, before: dict[str, str]) -> None:
        after = self.table.assignments(service)
        for resource, instance_id in before.items():
            if after.get(resource) != instance_id:
                await self._routes.save_assignment(service, resource, after.get(resource))

    async def _save_quietly(self, record: InstanceRecord) -> None:
        try:
            await self._instances.put(record)
        except StoreUnavailableError as e:
            _log.warning("registry record %s not saved: %s", record.key, e)
