"""The ``describe`` query: the method contracts the registered instances serve.

Any router answers it from the stores (the registry and the contracts bucket), leading or
not: it changes nothing, and reading the stores spares the leader both the work and the
memory of every instance's schemas. The api layer turns the answer into wire models.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ipc_router.application.ports import ContractRepository, InstanceRepository
from ipc_router.domain import InstanceRecord, UnknownMethodError, UnknownServiceError


@dataclass(frozen=True, slots=True)
class ContractGroup:
    """One version of a method's contract and the instances that registered it."""

    version: str
    contract: dict[str, Any]
    """As stored: ``request``, ``response``, ``durable``, ``summary``, ``truncated``."""
    instances: list[str]


@dataclass(frozen=True, slots=True)
class MethodContracts:
    """Every version of one method's contract, the one most instances serve first."""

    method: str
    versions: list[ContractGroup] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ServiceContracts:
    """One service's methods, and its instances that registered no contract."""

    service: str
    methods: list[MethodContracts]
    without_contracts: list[str]


class DescribeContracts:
    """Answers the ``describe`` query from the registry and the contracts store."""

    def __init__(self, instances: InstanceRepository, contracts: ContractRepository) -> None:
        self._instances = instances
        self._contracts = contracts

    async def __call__(
        self, service: str | None = None, method: str | None = None
    ) -> list[ServiceContracts]:
        """The contracts of ``service`` (None: of every service), of ``method`` only if
        given, by service name.

        Raises:
            UnknownServiceError: ``service`` has no registered instance.
            UnknownMethodError: none of its instances serves ``method``.
            StoreUnavailableError: a store did not answer.
        """
        by_service: dict[str, list[InstanceRecord]] = defaultdict(list)
        for record in await self._instances.list_instances():
            if service is None or record.service == service:
                by_service[record.service].append(record)
        if service is not None and service not in by_service:
            raise UnknownServiceError(service)
        stored = await self._contracts.load()
        return [
            _service_contracts(name, records, stored, method)
            for name, records in sorted(by_service.items())
        ]


def _service_contracts(
    service: str,
    records: list[InstanceRecord],
    stored: dict[tuple[str, str], dict[str, dict[str, Any]]],
    method: str | None,
) -> ServiceContracts:
    served = sorted({m for r in records for m in r.methods})
    if method is not None:
        if method not in served:
            raise UnknownMethodError(service, method, served)
        served = [method]
    records = sorted(records, key=lambda r: r.instance_id)
    without = [r.instance_id for r in records if (service, r.instance_id) not in stored]
    methods = []
    for name in served:
        groups: dict[str, ContractGroup] = {}
        for record in records:
            contract = stored.get((service, record.instance_id), {}).get(name)
            if contract is None or name not in record.methods:
                continue
            version = str(contract.get("version", ""))
            group = groups.setdefault(version, ContractGroup(version, contract, []))
            group.instances.append(record.instance_id)
        ranked = sorted(groups.values(), key=lambda g: (-len(g.instances), g.version))
        methods.append(MethodContracts(name, ranked))
    return ServiceContracts(service, methods, without)
