"""The routing table: which instance serves a call, and who is active. Pure rules, no I/O.

**Roles.** Per service, and per claimed resource, one instance is *active* and the others are
*standbys*, queued in registration order (first come, first served):

- the service's active is its first registered healthy instance;
- a claimed resource's active (its *owner*) is the first instance that claimed it.

**Routing**, in order:

1. **Claimed resource**: to its owner only, never to an instance that does not hold it.
2. **Service in active/standby mode** (the default): everything else goes to the active.
3. **Load-balanced service** (``Service(..., load_balanced=True)``): an unclaimed resource is
   assigned to the healthy instance with the fewest (ties: the earliest registered) and
   sticks there while it is healthy; calls without a resource go round robin.

Only instances that registered the method, and that are not draining, are considered.

**Failover.** An active silent for longer than ``heartbeat_timeout`` is failed over in the
sweep: the first healthy standby in the queue is promoted, the failed one goes to the back
of the queue as a standby, and both get new epochs. It happens no earlier than that, even
when the router learns sooner that the instance is unreachable, because the instance's own
lease (shorter than the timeout, counted from a heartbeat it sent) must have run out first,
so the failed active has stopped starting calls before its successor starts any (a handler
it had already started when it froze still finishes when it wakes). Meanwhile calls for it
wait (``FailoverPendingError``) rather than fail. Times are on a monotonic clock. Without a healthy standby the failed active keeps its role and calls are refused
as unavailable until it, or a new instance, is back. There is no fail-back.

**Handover.** A planned stop, a drain or a manual promotion first *drains* the outgoing
instance: it gets no new calls (they wait), and only once the router has no call in flight
to it do the roles move (the api layer waits; a promotion whose calls do not finish in time
changes nothing). A deregistered or reaped active is replaced at once.

An instance silent for ``reap_after`` seconds (60 by default) is removed, with its claims
and assignments, as if it had deregistered.

Every role change is recorded as a ``RoleEvent`` for the registry to save, announce and
tell the instances concerned (``take_events``).
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


class FailoverPendingError(NoHealthyInstanceError):
    """The call's active is failing over or handing over: routing it again soon works."""


class UnknownInstanceError(RoutingError):
    """No such instance is registered."""

    def __init__(self, service: str, instance_id: str) -> None:
        self.service = service
        self.instance_id = instance_id
        super().__init__(f"instance {instance_id!r} of {service!r} is not registered")


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
        session: its process's session (part of its inbox subject).
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


@dataclass(frozen=True, slots=True)
class RoleEvent:
    """One instance gained or lost the active role of its service or of one resource."""

    service: str
    instance_id: str
    role: Role
    """The role it has now in ``resource`` (or in the service when that is None)."""
    epoch: int
    """Its epoch after the change."""
    reason: str
    """``failover``, ``handover``, ``promote`` or ``removed`` (the active left)."""
    resource: str | None = None


@dataclass(slots=True)
class _ServiceTable:
    instances: dict[str, InstanceRecord] = field(default_factory=dict)  # queue order
    claims: dict[str, list[str]] = field(default_factory=dict)  # resource -> owner, standbys
    assignments: dict[str, str] = field(default_factory=dict)  # resource -> instance
    load: Counter[str] = field(default_factory=Counter)  # instance -> assigned resources
    next_rr: int = 0
    epoch: int = 0  # the highest epoch handed out
    last_slot: float = 0.0  # the latest place in the standby queue
    owners: dict[str, tuple[str, ...]] | None = None  # owner -> resources, None: stale

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

    def serves(self, record: InstanceRecord, method: str) -> bool:
        return not record.methods or method in record.methods

    def routable(self, record: InstanceRecord, method: str) -> bool:
        return (
            record.health is Health.HEALTHY and not record.draining and self.serves(record, method)
        )

    def methods(self) -> set[str]:
        return {m for r in self.instances.values() for m in r.methods}

    def active(self) -> InstanceRecord | None:
        return next((r for r in self.instances.values() if r.role is Role.ACTIVE), None)

    def next_epoch(self) -> int:
        self.epoch += 1
        return self.epoch

    def queue_slot(self, at: float = 0.0) -> float:
        """A place behind everyone queued so far (``at``: a registration's wall time)."""
        self.last_slot = max(at, self.last_slot + 1e-6)
        return self.last_slot

    def owned_by(self, instance_id: str) -> tuple[str, ...]:
        """The resources an instance owns, from an index rebuilt after claims change (it is
        read on every heartbeat answer; claims change rarely)."""
        if self.owners is None:
            index: dict[str, list[str]] = {}
            for resource, claimants in self.claims.items():
                if claimants:
                    index.setdefault(claimants[0], []).append(resource)
            self.owners = {owner: tuple(found) for owner, found in index.items()}
        return self.owners.get(instance_id, ())

    def claims_changed(self) -> None:
        self.owners = None


class RoutingTable:
    """Services, their instances and roles, claimed resources and sticky assignments.

    Args:
        heartbeat_timeout: seconds without a heartbeat after which an instance is unhealthy
            (and, if it was active, failed over).
        reap_after: seconds without a heartbeat after which it is removed altogether.
    """

    def __init__(self, heartbeat_timeout: float, *, reap_after: float = 60.0) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        # Past three timeouts, so the router has given up on calls the instance held
        # (which takes about two) before the instance disappears.
        self.reap_after = max(reap_after, 3 * heartbeat_timeout)
        self._services: dict[str, _ServiceTable] = {}
        self._epochs: dict[str, int] = {}  # of services whose last instance left
        self._events: list[RoleEvent] = []
        self._grace_until = 0.0
        self._graced: set[tuple[str, str]] = set()  # restored, not heard from since

    # --- queries ---------------------------------------------------------------------------
    def instances(self) -> list[InstanceRecord]:
        """Every registered instance, by service, in queue order."""
        return [r for t in self._services.values() for r in t.instances.values()]

    def get(self, service: str, instance_id: str) -> InstanceRecord | None:
        """One instance's record, if it is registered."""
        table = self._services.get(service)
        return table.instances.get(instance_id) if table else None

    def claims(self, service: str) -> dict[str, list[str]]:
        """Claimed resources of a service: resource -> claimants, owner first."""
        table = self._services.get(service)
        return {k: list(v) for k, v in table.claims.items()} if table else {}

    def owned(self, service: str, instance_id: str) -> tuple[str, ...]:
        """The claimed resources an instance is the active (owner) of."""
        table = self._services.get(service)
        return table.owned_by(instance_id) if table else ()

    def assignments(self, service: str) -> dict[str, str]:
        """Sticky assignments of unclaimed resources: resource -> instance."""
        table = self._services.get(service)
        return dict(table.assignments) if table else {}

    def knows(self, service: str, method: str) -> bool:
        """Whether an instance registered for ``service`` serves ``method``."""
        table = self._services.get(service)
        return table is not None and any(table.serves(r, method) for r in table.instances.values())

    def take_events(self) -> list[RoleEvent]:
        """The role changes since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # --- commands ----------------------------------------------------------------------------
    def register(self, record: InstanceRecord, now: float) -> Registered:
        """Add (or re-add) an instance and grant its roles and claims first come, first served.

        The same process registering again (same session) is idempotent; a new process
        under the id of one that stopped heartbeating replaces it.

        Raises:
            InstanceConflictError: a live process with another session holds the id.
        """
        table = self._table(record.service)
        old = table.instances.get(record.instance_id)
        if old is not None and old.session != record.session:
            age = now - old.last_heartbeat_at
            if old.health is Health.HEALTHY and age < self.heartbeat_timeout:
                raise InstanceConflictError(old, age)
        if old is not None and old.session == record.session:
            # The same process again (its answer was lost, or the router forgot it): keep
            # its place, role and epoch.
            record = replace(
                old,
                resources=record.resources,
                methods=record.methods,
                load_balanced=record.load_balanced,
                health=Health.HEALTHY,
                last_heartbeat_at=now,
            )
            table.instances[record.instance_id] = record
        else:
            if old is not None:
                self._forget(table, record.instance_id, keep_claims=False)
            record = replace(
                record,
                role=Role.STANDBY,
                health=Health.HEALTHY,
                epoch=table.next_epoch(),
                draining=False,
                last_heartbeat_at=now,
                queued_at=table.queue_slot(record.registered_at),
            )
            table.instances[record.instance_id] = record
        claimed: list[str] = []
        standby_for: dict[str, str] = {}
        table.claims_changed()
        for resource in dict.fromkeys(record.resources):
            claimants = table.claims.setdefault(resource, [])
            if record.instance_id not in claimants:
                claimants.append(record.instance_id)
            if claimants[0] == record.instance_id:
                claimed.append(resource)
                table.unassign(resource)
            else:
                standby_for[resource] = claimants[0]
        self._fill(table, now, reason="registered")
        current = table.instances[record.instance_id]
        return Registered(current, tuple(claimed), standby_for, replaced=old)

    def deregister(self, service: str, instance_id: str, now: float = 0.0) -> InstanceRecord | None:
        """Remove an instance, its claims and its assignments; return its last record.

        The roles it held pass at once to the first healthy standby of each.
        """
        table = self._services.get(service)
        if table is None or instance_id not in table.instances:
            return None
        record = table.instances[instance_id]
        self._forget(table, instance_id, keep_claims=False)
        if not table.instances:
            self._epochs[service] = table.epoch  # epochs never go back, even for a new start
            del self._services[service]
        else:
            self._fill(table, now, reason="removed")
        return record

    def drain(self, service: str, instance_id: str) -> InstanceRecord:
        """Stop routing new calls to an instance (the first step of a handover), until it
        leaves or ``undrain``.

        Raises:
            UnknownInstanceError: no such instance.
        """
        record = self._require(service, instance_id)
        record = replace(record, draining=True)
        self._services[service].instances[instance_id] = record
        return record

    def undrain(self, service: str, instance_id: str, now: float = 0.0) -> InstanceRecord | None:
        """Route to an instance again (a handover that was called off)."""
        record = self.get(service, instance_id)
        if record is None or not record.draining:
            return record
        record = replace(record, draining=False)
        table = self._services[service]
        table.instances[instance_id] = record
        self._fill(table, now, reason="handover")  # it may be the only one left to take a role
        return table.instances[instance_id]

    def promote(self, service: str, instance_id: str, now: float) -> InstanceRecord:
        """Make an instance the active of its service and the owner of every resource it
        claims (an operator's manual promotion; the caller drains the outgoing actives
        first, see ``actives_of``, and undrains them after). Returns its new record.

        Raises:
            UnknownInstanceError: no such instance.
            NoHealthyInstanceError: the instance is unhealthy or draining.
        """
        target = self._require(service, instance_id)
        table = self._services[service]
        if target.health is not Health.HEALTHY or target.draining:
            state = "draining" if target.draining else "unhealthy"
            raise NoHealthyInstanceError(
                service, f"instance {instance_id!r} of {service!r} is {state}"
            )
        current = table.active()
        if current is None or current.instance_id != instance_id:
            self._promote(table, target, None, "promote", now, demote=current)
        for resource, claimants in table.claims.items():
            if instance_id in claimants and claimants[0] != instance_id:
                owner = table.instances[claimants[0]]
                self._promote(table, table.instances[instance_id], resource, "promote", now, owner)
        return table.instances[instance_id]

    def hand_over(self, service: str, instance_id: str, now: float) -> InstanceRecord:
        """Move every role the instance holds to the first healthy standby of each (a drain:
        the caller has drained it and waited for its calls). A role without a healthy
        standby stays. Returns its record.

        Raises:
            UnknownInstanceError: no such instance.
        """
        record = self._require(service, instance_id)
        table = self._services[service]
        if record.role is Role.ACTIVE:
            standby = self._first_standby(table, list(table.instances), instance_id)
            if standby is not None:
                self._promote(table, standby, None, "handover", now, demote=record)
        for resource in table.owned_by(instance_id):
            standby = self._first_standby(table, table.claims[resource], instance_id)
            if standby is not None:
                outgoing = table.instances[instance_id]
                self._promote(table, standby, resource, "handover", now, demote=outgoing)
        return table.instances[instance_id]

    def actives_of(self, service: str, instance_id: str) -> list[str]:
        """The instances ``instance_id``'s promotion would take roles from (to drain)."""
        table = self._services.get(service)
        if table is None or instance_id not in table.instances:
            return []
        losing: dict[str, None] = {}
        active = table.active()
        if active is not None and active.instance_id != instance_id:
            losing[active.instance_id] = None
        for claimants in table.claims.values():
            if instance_id in claimants and claimants[0] != instance_id:
                losing[claimants[0]] = None
        return list(losing)

    def reapable(self, now: float) -> list[InstanceRecord]:
        """Instances silent for longer than ``reap_after``: to be deregistered."""
        return [
            r
            for t in self._services.values()
            for r in t.instances.values()
            if now - r.last_heartbeat_at > self.reap_after
        ]

    def heartbeat(
        self,
        service: str,
        instance_id: str,
        session: str | None,
        now: float,
        *,
        epoch: int | None = None,
    ) -> InstanceRecord | None:
        """Note a heartbeat. Returns the record when its health changed, else None.

        A heartbeat from an unknown instance or another session is ignored. An instance
        that comes back after a failover is a standby now: its role is not given back.

        ``epoch`` is the epoch the instance holds. One above its record's (a leader that died
        before it saved a role change it had announced) gets the instance a new epoch above
        both, and a role event that tells it its roles as this table has them: the instance
        would otherwise refuse every call routed under the table's older epoch.
        """
        record = self.get(service, instance_id)
        if record is None or (session and record.session and session != record.session):
            return None
        changed = record.health is not Health.HEALTHY
        record = replace(record, health=Health.HEALTHY, last_heartbeat_at=now)
        self._graced.discard((service, instance_id))
        table = self._services[service]
        if epoch is not None and epoch > record.epoch:
            table.epoch = max(table.epoch, epoch)
            record = replace(record, epoch=table.next_epoch())
            self._events.append(
                RoleEvent(service, instance_id, record.role, record.epoch, "resync")
            )
        table.instances[instance_id] = record
        if changed:
            self._fill(table, now, reason="failover")  # it may be the only candidate
        return table.instances[instance_id] if changed else None

    def expire(self, now: float) -> list[InstanceRecord]:
        """The sweep: mark instances silent for longer than the timeout unhealthy, and fail
        over the roles of failed actives. Returns the instances that turned unhealthy.

        During the grace period after a restore, restored instances not heard from since do
        not expire: they are given time to heartbeat to a new router.
        """
        graced = self._graced if now < self._grace_until else set()
        expired: list[InstanceRecord] = []
        for table in self._services.values():
            for key, record in table.instances.items():
                if (record.service, key) in graced:
                    continue
                silent = now - record.last_heartbeat_at
                if record.health is Health.HEALTHY and silent > self.heartbeat_timeout:
                    table.instances[key] = replace(record, health=Health.UNHEALTHY)
                    expired.append(table.instances[key])
            self._fail_over(table, now)
        return expired

    def grace_all(self, now: float, grace: float) -> None:
        """Give every instance ``grace`` seconds to be heard from again before it can
        expire: the router itself was not listening (cut off from NATS, or stalled), so a
        silence it saw says nothing about the instances."""
        self._grace_until = max(self._grace_until, now + grace)
        for table in self._services.values():
            for key, record in table.instances.items():
                self._graced.add((record.service, key))

    def mark_unhealthy(self, service: str, instance_id: str) -> InstanceRecord | None:
        """Mark one instance unhealthy at once (it stopped answering); return the record.

        Its roles are not failed over before its heartbeat timeout (see the module doc).
        """
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
        *,
        grace: float | None = None,
    ) -> None:
        """Load state saved by an earlier router run: roles, epochs, claims, assignments.

        Every instance starts healthy, whatever the last leader saved (it may have marked
        everyone unhealthy while it was cut off), and none of them expires for ``grace``
        seconds (two heartbeat timeouts by default) unless it heartbeats and falls silent
        again, so a restart or a change of leader alone never causes a failover.
        """
        if grace is None:
            grace = 2 * self.heartbeat_timeout
        self._grace_until = now + grace
        for record in sorted(records, key=lambda r: (r.queued_at or r.registered_at)):
            table = self._table(record.service)
            table.instances[record.instance_id] = replace(
                record, health=Health.HEALTHY, last_heartbeat_at=now
            )
            self._graced.add((record.service, record.instance_id))
            table.epoch = max(table.epoch, record.epoch)
            table.last_slot = max(table.last_slot, record.queued_at or record.registered_at)
        for (service, resource), claimants in claims.items():
            found = self._services.get(service)
            if found is None:
                continue
            kept = [c for c in claimants if c in found.instances]
            if not kept:
                continue
            found.claims[resource] = kept
            found.claims_changed()
            if kept[0] != claimants[0]:  # its saved owner is gone: a new owner, announced
                heir = replace(found.instances[kept[0]], epoch=found.next_epoch())
                found.instances[heir.instance_id] = heir
                self._events.append(
                    RoleEvent(
                        service, heir.instance_id, Role.ACTIVE, heir.epoch, "restored", resource
                    )
                )
        for (service, resource), instance_id in assignments.items():
            found = self._services.get(service)
            if found is not None and instance_id in found.instances:
                found.assign(resource, instance_id)
        for table in self._services.values():
            actives = sorted(
                (r for r in table.instances.values() if r.role is Role.ACTIVE),
                key=lambda r: r.epoch,
            )
            # Saved mid-change by a leader that died: the latest promotion (highest epoch)
            # stands, and the others are told they are standbys.
            for extra in actives[:-1]:
                demoted = replace(extra, role=Role.STANDBY, epoch=table.next_epoch())
                table.instances[extra.instance_id] = demoted
                self._events.append(
                    RoleEvent(
                        demoted.service,
                        demoted.instance_id,
                        Role.STANDBY,
                        demoted.epoch,
                        "restored",
                    )
                )
            if not actives:
                self._fill(table, now, reason="restored")

    def follow(
        self,
        records: Iterable[InstanceRecord],
        claims: dict[tuple[str, str], list[str]],
        assignments: dict[tuple[str, str], str],
    ) -> set[tuple[str, str]]:
        """Load the leading router's saved state as it stands, to route by: a standby
        router's copy. Health, roles and epochs stay as saved; no role is filled, no epoch
        changes and nothing is announced, so the copy never routes under an epoch the
        leader did not give (an instance refuses a call routed under an epoch older than
        its own: a copy that is behind costs a call routed again, never a call run by two
        actives). Returns the claimed resources whose saved owner is gone: the leader
        chooses their next owner, so the copy must not route them.
        """
        for record in sorted(records, key=lambda r: (r.queued_at or r.registered_at)):
            table = self._table(record.service)
            table.instances[record.instance_id] = record
            table.epoch = max(table.epoch, record.epoch)
        orphans: set[tuple[str, str]] = set()
        for (service, resource), claimants in claims.items():
            found = self._services.get(service)
            kept = [c for c in claimants if found is not None and c in found.instances]
            if found is None or not kept or kept[0] != claimants[0]:
                orphans.add((service, resource))
                continue
            found.claims[resource] = kept
            found.claims_changed()
        for (service, resource), instance_id in assignments.items():
            found = self._services.get(service)
            if found is not None and instance_id in found.instances:
                found.assign(resource, instance_id)
        return orphans

    # --- the decision ----------------------------------------------------------------------
    def route(self, service: str, method: str, resource_id: str | None) -> Route:
        """Choose the instance for one call (see the module docstring for the policy).

        Raises:
            UnknownServiceError, UnknownMethodError, NoHealthyInstanceError,
            FailoverPendingError (a subclass: wait for the table to change and route again).
        """
        table = self._services.get(service)
        if table is None:
            raise UnknownServiceError(service)
        known = table.methods()
        if known and method not in known:
            raise UnknownMethodError(service, method, known)
        claimants = table.claims.get(resource_id) if resource_id is not None else None
        if claimants:
            owner = table.instances[claimants[0]]
            what = f"resource {resource_id!r} of {service!r}"
            return self._to_active(table, owner, [table.instances[c] for c in claimants], what)
        balanced = next(iter(table.instances.values())).load_balanced
        if not balanced:
            active = table.active()
            if active is None:  # every instance left mid-change: never spread the calls
                if any(r.health is Health.HEALTHY for r in table.instances.values()):
                    raise FailoverPendingError(service, f"{service!r} has no active yet")
                raise NoHealthyInstanceError(service, f"no instance of {service!r} is healthy")
            return self._to_active(table, active, list(table.instances.values()), repr(service))
        candidates = [r for r in table.instances.values() if table.routable(r, method)]
        if not candidates:
            if any(r.draining and r.health is Health.HEALTHY for r in table.instances.values()):
                raise FailoverPendingError(service, f"{service!r} is handing over")
            raise NoHealthyInstanceError(
                service, f"no healthy instance of {service!r} serves {method!r}"
            )
        if resource_id is None:
            chosen = candidates[table.next_rr % len(candidates)]
            table.next_rr += 1
            return Route(chosen.instance_id, chosen.session, chosen.epoch)
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
    def _to_active(
        self, table: _ServiceTable, active: InstanceRecord, queue: list[InstanceRecord], what: str
    ) -> Route:
        if active.health is Health.HEALTHY and not active.draining:
            return Route(active.instance_id, active.session, active.epoch)
        takers = [r for r in queue if r is not active and r.health is Health.HEALTHY]
        if active.draining and active.health is Health.HEALTHY:
            if any(not r.draining for r in takers):
                raise FailoverPendingError(active.service, f"{what} is handing over")
            raise NoHealthyInstanceError(
                active.service,
                f"the active of {what}, instance {active.instance_id!r}, is draining and no "
                "standby can take over",
            )
        if any(not r.draining for r in takers):
            raise FailoverPendingError(
                active.service,
                f"the active of {what}, {active.instance_id!r}, is {active.health.value}; "
                "failing over",
            )
        raise NoHealthyInstanceError(
            active.service,
            f"the active of {what}, instance {active.instance_id!r}, is "
            f"{active.health.value}, and no standby can take over (none is healthy and undrained)",
        )

    def _table(self, service: str) -> _ServiceTable:
        table = self._services.get(service)
        if table is None:
            table = self._services[service] = _ServiceTable(epoch=self._epochs.pop(service, 0))
        return table

    def _require(self, service: str, instance_id: str) -> InstanceRecord:
        record = self.get(service, instance_id)
        if record is None:
            raise UnknownInstanceError(service, instance_id)
        return record

    def _failed(self, record: InstanceRecord, now: float) -> bool:
        """Whether an active's roles may be taken: silent past its timeout (so its lease
        has certainly run out), not merely marked unhealthy."""
        return (
            record.health is Health.UNHEALTHY
            and now - record.last_heartbeat_at > self.heartbeat_timeout
        )

    def _fail_over(self, table: _ServiceTable, now: float) -> None:
        active = table.active()
        if active is not None and self._failed(active, now):
            standby = self._first_standby(table, list(table.instances), active.instance_id)
            if standby is not None:
                self._promote(table, standby, None, "failover", now, demote=active)
        for resource, claimants in list(table.claims.items()):
            owner = table.instances.get(claimants[0])
            if owner is not None and self._failed(owner, now):
                standby = self._first_standby(table, claimants, owner.instance_id)
                if standby is not None:
                    self._promote(table, standby, resource, "failover", now, demote=owner)

    def _fill(self, table: _ServiceTable, now: float, *, reason: str) -> None:
        """Give roles nobody healthy holds to the first healthy standby."""
        active = table.active()
        if active is None or (active.health is Health.UNHEALTHY and self._failed(active, now)):
            standby = self._first_standby(
                table, list(table.instances), active.instance_id if active else None
            )
            if standby is not None:
                self._promote(table, standby, None, reason, now, demote=active)
        self._fail_over(table, now)

    @staticmethod
    def _first_standby(
        table: _ServiceTable, queue: list[str], outgoing: str | None
    ) -> InstanceRecord | None:
        for instance_id in queue:
            record = table.instances.get(instance_id)
            if (
                record is not None
                and instance_id != outgoing
                and record.health is Health.HEALTHY
                and not record.draining
            ):
                return record
        return None

    def _promote(
        self,
        table: _ServiceTable,
        incoming: InstanceRecord,
        resource: str | None,
        reason: str,
        now: float,
        demote: InstanceRecord | None = None,
    ) -> None:
        """Move one role (the service's, or one resource's) to ``incoming``; the outgoing
        active goes to the back of the queue. Both get a new epoch."""
        service = incoming.service
        if resource is None:
            incoming = replace(incoming, role=Role.ACTIVE, epoch=table.next_epoch())
        else:
            outgoing_id = demote.instance_id if demote is not None else None
            rest = [
                c for c in table.claims[resource] if c not in (incoming.instance_id, outgoing_id)
            ]
            tail = [outgoing_id] if outgoing_id is not None else []
            table.claims[resource] = [incoming.instance_id, *rest, *tail]
            table.claims_changed()
            incoming = replace(incoming, epoch=table.next_epoch())
        table.instances[incoming.instance_id] = incoming
        self._events.append(
            RoleEvent(service, incoming.instance_id, Role.ACTIVE, incoming.epoch, reason, resource)
        )
        if demote is None or demote.instance_id not in table.instances:
            return
        current = table.instances[demote.instance_id]
        outgoing = replace(current, epoch=table.next_epoch())
        if resource is None:
            outgoing = replace(outgoing, role=Role.STANDBY, queued_at=table.queue_slot())
            del table.instances[demote.instance_id]  # to the back of the standby queue
        table.instances[demote.instance_id] = outgoing
        self._events.append(
            RoleEvent(service, outgoing.instance_id, Role.STANDBY, outgoing.epoch, reason, resource)
        )

    def _forget(self, table: _ServiceTable, instance_id: str, *, keep_claims: bool) -> None:
        table.instances.pop(instance_id, None)
        table.claims_changed()
        if not keep_claims:
            for resource in [r for r, c in table.claims.items() if instance_id in c]:
                was_owner = table.claims[resource][0] == instance_id
                table.claims[resource].remove(instance_id)
                claimants = table.claims[resource]
                if not claimants:
                    del table.claims[resource]
                elif was_owner:
                    heir = self._first_standby(table, claimants, None)
                    if heir is None:  # nobody can take it now: the next one, failed over later
                        heir = table.instances[claimants[0]]
                    claimants.remove(heir.instance_id)
                    claimants.insert(0, heir.instance_id)
                    heir = replace(heir, epoch=table.next_epoch())
                    table.instances[heir.instance_id] = heir
                    self._events.append(
                        RoleEvent(
                            heir.service,
                            heir.instance_id,
                            Role.ACTIVE,
                            heir.epoch,
                            "removed",
                            resource,
                        )
                    )
        for resource in [r for r, i in table.assignments.items() if i == instance_id]:
            table.unassign(resource)
