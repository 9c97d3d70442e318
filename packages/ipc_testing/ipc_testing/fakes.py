"""Hand-written fakes for the router's ports, for unit tests of the domain and application."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ipc_router.application.errors import StoreUnavailableError
from ipc_router.application.ports import BrokerInfo, SavedRoutes
from ipc_router.domain import Health, InstanceRecord, Role


class InMemoryInstanceRepository:
    """``InstanceRepository`` in a dict."""

    def __init__(self, records: list[InstanceRecord] | None = None) -> None:
        self.records = {r.key: r for r in records or []}

    async def list_instances(self) -> list[InstanceRecord]:
        return list(self.records.values())

    async def put(self, record: InstanceRecord) -> None:
        self.records[record.key] = record

    async def delete(self, service: str, instance_id: str) -> None:
        self.records.pop(f"{service}.{instance_id}", None)


class InMemoryContractRepository:
    """``ContractRepository`` in a dict; ``failing`` makes every write raise."""

    def __init__(self) -> None:
        self.contracts: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.failing = False

    async def save(
        self, service: str, instance_id: str, contracts: Mapping[str, Mapping[str, Any]] | None
    ) -> None:
        if self.failing:
            raise StoreUnavailableError("contracts", "failing on purpose")
        if contracts is None:
            self.contracts.pop((service, instance_id), None)
        else:
            self.contracts[(service, instance_id)] = {m: dict(c) for m, c in contracts.items()}

    async def load(self) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        return dict(self.contracts)


class InMemoryRouteRepository:
    """``RouteRepository`` in two dicts; ``failing`` makes every write raise.

    ``attempts`` counts the writes tried, failed or not.
    """

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], list[str]] = {}
        self.assignments: dict[tuple[str, str], str] = {}
        self.failing = False
        self.attempts = 0

    async def load(self) -> SavedRoutes:
        return SavedRoutes(claims=dict(self.claims), assignments=dict(self.assignments))

    async def save_claim(self, service: str, resource: str, claimants: list[str]) -> None:
        self._check()
        if claimants:
            self.claims[(service, resource)] = list(claimants)
        else:
            self.claims.pop((service, resource), None)

    async def save_assignment(self, service: str, resource: str, instance_id: str | None) -> None:
        self._check()
        if instance_id is None:
            self.assignments.pop((service, resource), None)
        else:
            self.assignments[(service, resource)] = instance_id

    def _check(self) -> None:
        self.attempts += 1
        if self.failing:
            raise StoreUnavailableError("routes", "failing on purpose")


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

    def monotonic(self) -> float:
        return self.current


def make_instance(
    service: str,
    instance_id: str,
    *,
    role: Role = Role.STANDBY,
    at: float = 0.0,
    resources: tuple[str, ...] = (),
    methods: tuple[str, ...] = (),
    session: str = "",
    load_balanced: bool = False,
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
        methods=methods,
        session=session,
        load_balanced=load_balanced,
    )
