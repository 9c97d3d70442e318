"""Hand-written fakes for the router's ports, for unit tests of the domain and application."""

from __future__ import annotations

from ipc_router.application.ports import BrokerInfo
from ipc_router.domain import Health, InstanceRecord, Role


class InMemoryInstanceRepository:
    """``InstanceRepository`` in a dict."""

    def __init__(self, records: list[InstanceRecord] | None = None) -> None:
        self.records = {r.key: r for r in records or []}

    async def list_instances(self) -> list[InstanceRecord]:
        return list(self.records.values())


class FakeBroker:
    """``BrokerInfoSource`` returning a fixed answer."""

    def __init__(self, info: BrokerInfo) -> None:
        self.info = info

    def broker_info(self) -> BrokerInfo:
        return self.info


class FakeClock:
    """``Clock`` that only moves when told."""

    def __init__(self, now: float) -> None:
        self.current = now

    def now(self) -> float:
        return self.current


def make_instance(
    service: str,
    instance_id: str,
    *,
    role: Role = Role.STANDBY,
    at: float = 0.0,
    resources: tuple[str, ...] = (),
) -> InstanceRecord:
    """A healthy epoch-1 record, registered and last heard from at ``at``."""
    return InstanceRecord(
        service=service,
        instance_id=instance_id,
        role=role,
        health=Health.HEALTHY,
        epoch=1,
        registered_at=at,
        last_heartbeat_at=at,
        resources=resources,
    )
