"""The routing table: which instance serves a call. Pure rules, no I/O.

Policy, in order:

1. **Claimed resource**: a resource an instance named in its registration belongs to the
   first instance that claimed it (first come, first served); later claimants queue behind
   it. Calls for it go to its owner, and only to its owner: when the owner is unhealthy the
   call is refused as unavailable rather than sent to an instance that does not hold the
   resource.
2. **Unclaimed resource**: the first call assigns it to the healthy instance with the fewest
   assigned resources (ties go to the earliest registered). The assignment is sticky: the
   resource keeps landing there while that instance is healthy, and moves only when it is
   not (to the least-loaded healthy instance again). New instances do not steal resources.
3. **No resource**: round robin over the healthy instances.

Only instances that registered the method are considered.

An instance silent for ``reap_after`` seconds (60 by default) is removed, with its claims
and assignments, as if it had deregistered: a process that died for good must not hold its
resources forever. When the active instance of a service goes (deregistered or reaped), the
first healthy standby in registration order becomes active.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ipc_router.domain.model import Health, InstanceRecord, Role


class RoutingError(Exception):
    """A call cannot be routed; subclasses say why."""


class UnknownServiceError(RoutingError):
    """No instance of the service was ever registered (or all deregistered)."""

    def __init__(self, service: str) -> None:
        self.service = service
        super().__init__(f"no instance of service {service!r} is registered")


class UnknownMethodError(RoutingError):
    """The service is registered, but none of its instances serves the method."""

    def __init__(self, service: str, method: str, known: Iterable[str]) -> None:
        self.service = service
        self.method = method
        names = ", ".join(sorted(known)) or "none"
        super().__init__(f"service {service!r} has no method {method!r} (it has: {names})")


class NoHealthyInstanceError(RoutingError):
    """Every instance that could serve the call is unhealthy."""

    def __init__(self, service: str, why: str) -> None:
        self.service = service
        super().__init__(why)


class InstanceConflictError(RoutingError):
    """Another live process already holds this instance id."""

    def __init__(self, record: InstanceRecord, age_s: float) -> None:
        self.record = record
        super().__init__(
            f"instance {record.instance_id!r} of {record.service!r} is already registered by "
            f"another live process (last heartbeat {age_s:.1f}s ago); stop that process or "
            "use another instance_id"
        )


@dataclass(frozen=True, slots=True)
class Route:
    """Where one call goes.

    Attributes:
        instance_id: the chosen instance.
        epoch: the epoch the call is routed under (for fencing).
        new_assignment: a resource this decision assigned (to be persisted), if any.
    """

    instance_id: str
    session: str
    epoch: int
    new_assignment: str | None = None


@dataclass(frozen=True, slots=True)
class Registered:
    """The outcome of a registration."""

    record: InstanceRecord
    claimed: tuple[str, ...]
    standby_for: dict[str, str]
    """Resources another instance owns already: resource -> owner."""
    replaced: InstanceRecord | None = None
    """The previous record under this id (a restarted process), if there was one."""


@dataclass(slots=True)
class _ServiceTable:
    instances: dict[str, InstanceRecord] = field(default_factory=dict)  # registration order
    claims: dict[str, list[str]] = field(default_factory=dict)  # resource -> claimants
    assignments: dict[str, str] = field(default_factory=dict)  # resource -> instance
    load: Counter[str] = field(default_factory=Counter)  # instance -> assigned resources
    next_rr: int = 0

    def assign(self, resource: str, instance_id: str) -> None:
        self.unassign(resource)
        self.assignments[resource] = instance_id
        self.load[instance_id] += 1

    def unassign(self, resource: str) -> None:
        instance_id = self.assignments.pop(resource, None)
        if instance_id is not None:
            self.load[instance_id] -= 1
            if self.load[instance_id] <= 0:
                del self.load[instance_id]

    def healthy_with(self, method: str) -> list[InstanceRecord]:
        return [
            r
            for r in self.instances.values()
            if r.health is Health.HEALTHY and (not r.methods or method in r.methods)
        ]

    def methods(self) -> set[str]:
        return {m for r in self.instances.values() for m in r.methods}


class RoutingTable:
    """Services, their instances, claimed resources and sticky assignments.

    Args:
        heartbeat_timeout: seconds without a heartbeat after which an instance is unhealthy.
        reap_after: seconds without a heartbeat after which it is removed altogether.
    """

    def __init__(self, heartbeat_timeout: float, *, reap_after: float = 60.0) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        # Past three timeouts, so the router has given up on calls the instance held
        # (which takes about two) before the instance disappears.
        self.reap_after = max(reap_after, 3 * heartbeat_timeout)
        self._services: dict[str, _ServiceTable] = {}

    # --- queries ---------------------------------------------------------------------------
    def instances(self) -> list[InstanceRecord]:
        """Every registered instance, by service, in registration order."""
        return [r for t in self._services.values() for r in t.instances.values()]

    def get(self, service: str, instance_id: str) -> InstanceRecord | None:
        """One instance's record, if it is registered."""
        table = self._services.get(service)
        return table.instances.get(instance_id) if table else None

    def claims(self, service: str) -> dict[str, list[str]]:
        """Claimed resources of a service: resource -> claimants, owner first."""
        table = self._services.get(service)
        return {k: list(v) for k, v in table.claims.items()} if table else {}

    def assignments(self, service: str) -> dict[str, str]:
        """Sticky assignments of unclaimed resources: resource -> instance."""
        table = self._services.get(service)
        return dict(table.assignments) if table else {}

    # --- commands ----------------------------------------------------------------------------
    def register(self, record: InstanceRecord, now: float) -> Registered:
        """Add (or re-add) an instance and grant its claims first come, first served.

        The same process registering again (same session) is idempotent; a new process
        under the id of one that stopped heartbeating replaces it.

        Raises:
            InstanceConflictError: a live process with another session holds the id.
        """
        table = self._services.setdefault(record.service, _ServiceTable())
        old = table.instances.get(record.instance_id)
        if old is not None and old.session != record.session:
            age = now - old.last_heartbeat_at
            if old.health is Health.HEALTHY and age < self.heartbeat_timeout:
                raise InstanceConflictError(old, age)
        if old is not None:
            self._forget(table, record.instance_id, keep_claims=old.session == record.session)
        active = any(r.role is Role.ACTIVE for r in table.instances.values())
        record = replace(
            record,
            role=Role.STANDBY if active else Role.ACTIVE,
            health=Health.HEALTHY,
            last_heartbeat_at=now,
        )
        table.instances[record.instance_id] = record
        claimed: list[str] = []
        standby_for: dict[str, str] = {}
        for resource in dict.fromkeys(record.resources):
            claimants = table.claims.setdefault(resource, [])
            if record.instance_id not in claimants:
                claimants.append(record.instance_id)
            if claimants[0] == record.instance_id:
                claimed.append(resource)
                table.unassign(resource)
            else:
                standby_for[resource] = claimants[0]
        return Registered(record, tuple(claimed), standby_for, replaced=old)

    def deregister(self, service: str, instance_id: str) -> InstanceRecord | None:
        """Remove an instance, its claims and its assignments; return its last record."""
        table = self._services.get(service)
        if table is None or instance_id not in table.instances:
            return None
        record = table.instances[instance_id]
        self._forget(table, instance_id, keep_claims=False)
        if not table.instances:
            del self._services[service]
        return record

    def fill_vacancy(self, service: str) -> InstanceRecord | None:
        """Make the first healthy standby active when the service has no active at all
        (its active was removed), under a new epoch. Returns the promoted record, if any.
        """
        table = self._services.get(service)
        if table is None or any(r.role is Role.ACTIVE for r in table.instances.values()):
            return None
        healthy = [r for r in table.instances.values() if r.health is Health.HEALTHY]
        if not healthy:
            return None
        epoch = max(r.epoch for r in table.instances.values()) + 1
        promoted = replace(healthy[0], role=Role.ACTIVE, epoch=epoch)
        table.instances[promoted.instance_id] = promoted
        return promoted

    def reapable(self, now: float) -> list[InstanceRecord]:
        """Instances silent for longer than ``reap_after``: to be deregistered."""
        return [
            r
            for t in self._services.values()
            for r in t.instances.values()
            if now - r.last_heartbeat_at > self.reap_after
        ]

    def heartbeat(
        self, service: str, instance_id: str, session: str | None, now: float
    ) -> InstanceRecord | None:
        """Note a heartbeat. Returns the record when its health changed, else None.

        A heartbeat from an unknown instance or another session is ignored.
        """
        record = self.get(service, instance_id)
        if record is None or (session and record.session and session != record.session):
            return None
        changed = record.health is not Health.HEALTHY
        record = replace(record, health=Health.HEALTHY, last_heartbeat_at=now)
        self._services[service].instances[instance_id] = record
        return record if changed else None

    def expire(self, now: float) -> list[InstanceRecord]:
        """Mark instances silent for longer than the timeout unhealthy; return them."""
        expired: list[InstanceRecord] = []
        for table in self._services.values():
            for key, record in table.instances.items():
                silent = now - record.last_heartbeat_at
                if record.health is Health.HEALTHY and silent > self.heartbeat_timeout:
                    table.instances[key] = replace(record, health=Health.UNHEALTHY)
                    expired.append(table.instances[key])
        return expired

    def mark_unhealthy(self, service: str, instance_id: str) -> InstanceRecord | None:
        """Mark one instance unhealthy at once (it stopped answering); return the record."""
        record = self.get(service, instance_id)
        if record is None or record.health is Health.UNHEALTHY:
            return None
        record = replace(record, health=Health.UNHEALTHY)
        self._services[service].instances[instance_id] = record
        return record

    def restore(
        self,
        records: Iterable[InstanceRecord],
        claims: dict[tuple[str, str], list[str]],
        assignments: dict[tuple[str, str], str],
        now: float,
    ) -> None:
        """Load state saved by an earlier router run.

        Every instance starts healthy with a full heartbeat timeout from ``now`` before it
        can be declared dead, whatever the last leader saved (it may have marked everyone
        unhealthy while it was cut off), so a change of leader alone never makes an
        instance unhealthy.
        """
        for record in sorted(records, key=lambda r: r.registered_at):
            table = self._services.setdefault(record.service, _ServiceTable())
            table.instances[record.instance_id] = replace(
                record, health=Health.HEALTHY, last_heartbeat_at=now
            )
        for (service, resource), claimants in claims.items():
            found = self._services.get(service)
            if found is not None:
                kept = [c for c in claimants if c in found.instances]
                if kept:
                    found.claims[resource] = kept
        for (service, resource), instance_id in assignments.items():
            found = self._services.get(service)
            if found is not None and instance_id in found.instances:
                found.assign(resource, instance_id)

    # --- the decision ----------------------------------------------------------------------
    def route(self, service: str, method: str, resource_id: str | None) -> Route:
        """Choose the instance for one call (see the module docstring for the policy).

        Raises:
            UnknownServiceError, UnknownMethodError, NoHealthyInstanceError.
        """
        table = self._services.get(service)
        if table is None:
            raise UnknownServiceError(service)
        candidates = table.healthy_with(method)
        if not candidates:
            known = table.methods()
            if known and method not in known:
                raise UnknownMethodError(service, method, known)
            raise NoHealthyInstanceError(
                service, f"no healthy instance of {service!r} serves {method!r}"
            )
        if resource_id is None:
            chosen = candidates[table.next_rr % len(candidates)]
            table.next_rr += 1
            return Route(chosen.instance_id, chosen.session, chosen.epoch)
        claimants = table.claims.get(resource_id)
        if claimants:
            owner = table.instances[claimants[0]]
            if owner not in candidates:
                raise NoHealthyInstanceError(
                    service,
                    f"resource {resource_id!r} of {service!r} is owned by instance "
                    f"{owner.instance_id!r}, which is {owner.health.value}",
                )
            return Route(owner.instance_id, owner.session, owner.epoch)
        current = table.assignments.get(resource_id)
        if current is not None:
            record = table.instances.get(current)
            if record is not None and record in candidates:
                return Route(record.instance_id, record.session, record.epoch)
        # min keeps the first of equals: ties go to the earliest registered.
        chosen = min(candidates, key=lambda r: table.load[r.instance_id])
        table.assign(resource_id, chosen.instance_id)
        return Route(chosen.instance_id, chosen.session, chosen.epoch, new_assignment=resource_id)

    # --- internals ---------------------------------------------------------------------------
    @staticmethod
    def _forget(table: _ServiceTable, instance_id: str, *, keep_claims: bool) -> None:
        table.instances.pop(instance_id, None)
        if not keep_claims:
            for resource in [r for r, c in table.claims.items() if instance_id in c]:
                table.claims[resource].remove(instance_id)
                if not table.claims[resource]:
                    del table.claims[resource]
        for resource in [r for r, i in table.assignments.items() if i == instance_id]:
            table.unassign(resource)
