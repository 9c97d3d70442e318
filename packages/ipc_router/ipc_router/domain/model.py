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

    @property
    def key(self) -> str:
        """The instance's identity across the system: ``service.instance_id``."""
        return f"{self.service}.{self.instance_id}"


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
    """An instance was registered, deregistered, or changed health."""

    kind: str
    """``registry`` or ``health``."""
    service: str
    instance_id: str
    state: str
    """``registered``, ``deregistered``, ``reaped``, ``healthy`` or ``unhealthy``."""
