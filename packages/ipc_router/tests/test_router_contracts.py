"""Contracts with fakes and no NATS: registration keeps them (and their versions), the
``describe`` query groups the instances by version, and a differing instance is found."""

from __future__ import annotations

from typing import Any

import pytest

from ipc_router.application.contracts import DescribeContracts
from ipc_router.application.membership import HeartbeatReports, Membership, RegisterInstance
from ipc_router.application.registry import InstanceRegistry
from ipc_router.domain import RoutingTable, UnknownMethodError, UnknownServiceError
from ipc_testing.fakes import (
    FakeClock,
    InMemoryContractRepository,
    InMemoryInstanceRepository,
    InMemoryRouteRepository,
)


def contract(version: str, request: Any = None, *, durable: bool = True) -> dict[str, Any]:
    return {"request": request, "response": {}, "durable": durable, "version": version}


class Fixture:
    def __init__(self) -> None:
        self.instances = InMemoryInstanceRepository()
        self.contracts = InMemoryContractRepository()
        self.registry = InstanceRegistry(
            RoutingTable(1.5), self.instances, InMemoryRouteRepository(), FakeClock(0.0)
        )
        self.membership = Membership(self.registry, HeartbeatReports(), self.contracts)
        self.describe = DescribeContracts(self.instances, self.contracts)

    async def register(self, instance_id: str, contracts: dict[str, dict[str, Any]] | None) -> None:
        await self.membership.register(
            RegisterInstance(
                service="svc",
                instance_id=instance_id,
                session=instance_id,
                resources=(),
                methods=("book", "ping"),
                direct_methods=(),
                direct=True,
                load_balanced=False,
                contracts=contracts,
            )
        )


async def test_describe_groups_instances_by_version_the_most_common_first() -> None:
    f = Fixture()
    await f.register("a", {"book": contract("v1", {"type": "object"}), "ping": contract("p")})
    await f.register("b", {"book": contract("v2", {"type": "string"}), "ping": contract("p")})
    await f.register("c", {"book": contract("v2", {"type": "string"}), "ping": contract("p")})
    await f.register("old", None)
    (found,) = await f.describe("svc")
    assert found.without_contracts == ["old"]
    book, ping = found.methods
    assert [(g.version, g.instances) for g in book.versions] == [("v2", ["b", "c"]), ("v1", ["a"])]
    assert book.versions[0].contract["request"] == {"type": "string"}
    assert [(g.version, g.instances) for g in ping.versions] == [("p", ["a", "b", "c"])]
    assert [m.method for m in (await f.describe("svc", "ping"))[0].methods] == ["ping"]
    assert [s.service for s in await f.describe()] == ["svc"]


async def test_describe_refuses_an_unknown_service_or_method() -> None:
    f = Fixture()
    await f.register("a", {"book": contract("v1")})
    with pytest.raises(UnknownServiceError):
        await f.describe("nobody")
    with pytest.raises(UnknownMethodError):
        await f.describe("svc", "nope")


async def test_the_record_keeps_the_versions_and_a_differing_instance_is_found() -> None:
    f = Fixture()
    await f.register("a", {"book": contract("v1"), "ping": contract("p")})
    await f.register("b", {"book": contract("v2"), "ping": contract("p")})
    await f.register("old", None)
    record = f.registry.table.get("svc", "b")
    assert record is not None
    assert record.contract_versions == (("book", "v2"), ("ping", "p"))
    conflicts = f.membership.contract_conflicts(record)
    assert [(c.method, c.version, c.others) for c in conflicts] == [("book", "v2", (("a", "v1"),))]
    assert f.instances.records["svc.b"].contract_versions == record.contract_versions


async def test_registering_again_without_contracts_forgets_the_old_ones() -> None:
    f = Fixture()
    await f.register("a", {"book": contract("v1")})
    await f.register("a", None)  # the same process, downgraded: nothing stale remains
    assert ("svc", "a") not in f.contracts.contracts


async def test_a_store_that_fails_costs_the_contracts_not_the_registration() -> None:
    f = Fixture()
    f.contracts.failing = True
    await f.register("a", {"book": contract("v1")})
    assert f.registry.table.get("svc", "a") is not None
    (found,) = await f.describe("svc")
    assert found.without_contracts == ["a"]
