"""The router's domain: instances, their roles and health. No I/O, no NATS, no msgpack."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    """An instance's role within its service."""

    ACTIVE = "active"
    STANDBY = "standby"


class Health(enum.StrEnum):
    """Whether the router currently believes an instance is alive."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the registry knows of one registered instance.

    Times are Unix seconds. ``role`` is the instance's role in its service (the resources it
    owns are in the routing table's claims). ``epoch`` changes whenever any of its roles
    changes, to a value above every epoch the service has used, so a call routed before the
    change carries an older epoch and the instance refuses it.
    """

    service: str
    instance_id: str
    role: Role
    health: Health
    epoch: int
    registered_at: float
    last_heartbeat_at: float
    resources: tuple[str, ...] = field(default=())
    methods: tuple[str, ...] = field(default=())
    direct_methods: tuple[str, ...] = field(default=())
    """Methods its callers send straight to it by default (declared ``durable=False``)."""
    direct: bool = False
    """It takes direct calls (its SDK checks their epoch, role, lease and drain)."""
    session: str = ""
    """Random per instance process; a second process with the same id has another."""
    load_balanced: bool = False
    """The service spreads calls without a claimed resource over all healthy instances
    instead of sending them to its active."""
    draining: bool = False
    """Handing over (planned stop or promotion): no new calls until its in-flight ones end."""
    queued_at: float = 0.0
    """When it joined the standby queue (its registration, or its demotion): standbys are
    promoted in this order."""
    contract_versions: tuple[tuple[str, str], ...] = field(default=())
    """(method, version of the contract it registered for it); empty when it registered
    none (an older SDK). The contracts themselves are kept apart, not in the record."""

    @property
    def key(self) -> str:
        """The instance's identity across the system: ``service.instance_id``."""
        return f"{self.service}.{self.instance_id}"


@dataclass(frozen=True, slots=True)
class ContractConflict:
    """A method for which an instance registered another contract than its peers did."""

    method: str
    version: str
    """The version the instance registered."""
    others: tuple[tuple[str, str], ...]
    """(peer instance id, the version it registered), for each peer that differs."""


def contract_conflicts(
    record: InstanceRecord, peers: Iterable[InstanceRecord]
) -> list[ContractConflict]:
    """The methods for which ``record`` registered another contract version than one of
    ``peers`` (the other instances of its service) did; peers that registered none for
    the method do not count."""
    theirs = [
        (peer.instance_id, dict(peer.contract_versions))
        for peer in peers
        if peer.service == record.service and peer.instance_id != record.instance_id
    ]
    conflicts: list[ContractConflict] = []
    for method, version in record.contract_versions:
        others = tuple(
            (instance_id, versions[method])
            for instance_id, versions in theirs
            if versions.get(method, version) != version
        )
        if others:
            conflicts.append(ContractConflict(method, version, others))
    return conflicts


@dataclass(frozen=True, slots=True)
class RegistryCounts:
    """How many services and instances are registered."""

    services: int
    instances: int

    @classmethod
    def of(cls, instances: Iterable[InstanceRecord]) -> RegistryCounts:
        """Count the distinct services and the instances among ``instances``."""
        keys = {(i.service, i.instance_id) for i in instances}
        return cls(services=len({service for service, _ in keys}), instances=len(keys))


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    """An instance was registered, deregistered, drained or undrained, or changed health."""

    kind: str
    """``registry`` or ``health``."""
    service: str
    instance_id: str
    state: str
    """``registered``, ``deregistered``, ``reaped``, ``draining``, ``undrained`` (routed to
    again), ``healthy`` or ``unhealthy``."""
