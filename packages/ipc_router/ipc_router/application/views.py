"""Operators' views of the routing table: services, instances, routes (read-only queries).

The api layer turns them into wire models; nothing here knows NATS or the wire format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ipc_router.domain import (
    Health,
    InstanceRecord,
    Role,
    RoutingTable,
    UnknownInstanceError,
    UnknownServiceError,
)


class AmbiguousInstanceError(Exception):
    """One instance id is registered in several services: the service must be named."""

    def __init__(self, instance_id: str, services: list[str]) -> None:
        self.services = services
        super().__init__(
            f"instance id {instance_id!r} is registered in several services "
            f"({', '.join(services)}); name the service"
        )


@dataclass(frozen=True, slots=True)
class ServiceView:
    """One service: its mode, active instance and counts."""

    service: str
    load_balanced: bool
    active: str | None
    instances: int
    healthy: int
    methods: list[str]
    claimed_resources: int


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One instance, with what the table knows around it."""

    record: InstanceRecord
    heartbeat_age_s: float
    inflight: int
    owned: list[str] = field(default_factory=list)
    standby_for: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RouteView:
    """Where one resource's calls go."""

    service: str
    resource: str
    kind: str
    """``claim`` or ``assignment``."""
    instance: str
    standbys: list[str] = field(default_factory=list)


def find_instance(table: RoutingTable, instance_id: str, service: str | None) -> InstanceRecord:
    """The one registered instance with this id (in ``service``, if given).

    Raises:
        UnknownInstanceError: none; AmbiguousInstanceError: several services have it.
    """
    found = [
        r
        for r in table.instances()
        if r.instance_id == instance_id and service in (None, r.service)
    ]
    if not found:
        raise UnknownInstanceError(service or "any service", instance_id)
    if len(found) > 1:
        raise AmbiguousInstanceError(instance_id, sorted(r.service for r in found))
    return found[0]


def describe_services(table: RoutingTable) -> list[ServiceView]:
    """Every registered service, by name."""
    by_service: dict[str, list[InstanceRecord]] = {}
    for record in table.instances():
        by_service.setdefault(record.service, []).append(record)
    return [
        ServiceView(
            service=service,
            load_balanced=records[0].load_balanced,
            active=next((r.instance_id for r in records if r.role is Role.ACTIVE), None),
            instances=len(records),
            healthy=sum(1 for r in records if r.health is Health.HEALTHY),
            methods=sorted({m for r in records for m in r.methods}),
            claimed_resources=len(table.claims(service)),
        )
        for service, records in sorted(by_service.items())
    ]


def describe_instances(
    table: RoutingTable,
    service: str | None,
    now: float,
    inflight: Callable[[str, str], int],
) -> list[InstanceView]:
    """Registered instances (of ``service``, if given), in queue order.

    Args:
        now: the table's monotonic clock, for heartbeat ages.
        inflight: calls in flight to (service, instance_id).

    Raises:
        UnknownServiceError: ``service`` is not registered.
    """
    _known(table, service)
    views = []
    for r in table.instances():
        if service not in (None, r.service):
            continue
        claims = table.claims(r.service)
        views.append(
            InstanceView(
                record=r,
                heartbeat_age_s=max(0.0, now - r.last_heartbeat_at),
                inflight=inflight(r.service, r.instance_id),
                owned=sorted(res for res, c in claims.items() if c[0] == r.instance_id),
                standby_for=sorted(res for res, c in claims.items() if r.instance_id in c[1:]),
            )
        )
    return views


def describe_routes(
    table: RoutingTable, service: str | None, resource: str | None
) -> list[RouteView]:
    """Claims (owner, then standbys in order) and sticky assignments.

    Raises:
        UnknownServiceError: ``service`` is not registered.
    """
    _known(table, service)
    views = []
    for name in sorted({r.service for r in table.instances()}):
        if service not in (None, name):
            continue
        for res, claimants in sorted(table.claims(name).items()):
            if resource in (None, res):
                views.append(RouteView(name, res, "claim", claimants[0], claimants[1:]))
        for res, instance_id in sorted(table.assignments(name).items()):
            if resource in (None, res):
                views.append(RouteView(name, res, "assignment", instance_id))
    return views


def _known(table: RoutingTable, service: str | None) -> None:
    if service is not None and not any(r.service == service for r in table.instances()):
        raise UnknownServiceError(service)
