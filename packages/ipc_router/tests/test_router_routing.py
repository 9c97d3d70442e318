"""The routing table and the registry use cases, with fakes and no I/O."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipc_router.application.registry import InstanceRegistry
from ipc_router.domain import (
    Health,
    InstanceConflictError,
    InstanceRecord,
    NoHealthyInstanceError,
    Role,
    RoutingTable,
    UnknownMethodError,
    UnknownServiceError,
)
from ipc_testing.fakes import (
    FakeClock,
    InMemoryInstanceRepository,
    InMemoryRouteRepository,
    make_instance,
)

TIMEOUT = 1.5


def instance(
    instance_id: str,
    *resources: str,
    session: str = "s",
    methods: tuple[str, ...] = ("work",),
    balanced: bool = False,
) -> InstanceRecord:
    return make_instance(
        "svc",
        instance_id,
        resources=resources,
        methods=methods,
        session=session or instance_id,
        load_balanced=balanced,
    )


def table_with(*records: InstanceRecord, now: float = 0.0) -> RoutingTable:
    table = RoutingTable(TIMEOUT)
    for r in records:
        table.register(r, now)
    return table


def test_claims_are_first_come_first_served() -> None:
    table = RoutingTable(TIMEOUT)
    first = table.register(instance("b1", "acc_1", session="1"), 0)
    second = table.register(instance("b2", "acc_1", "acc_2", session="2"), 0)
    assert first.claimed == ("acc_1",)
    assert (second.claimed, second.standby_for) == (("acc_2",), {"acc_1": "b1"})
    assert table.route("svc", "work", "acc_1").instance_id == "b1"
    assert table.route("svc", "work", "acc_2").instance_id == "b2"
    assert (first.record.role, second.record.role) == (Role.ACTIVE, Role.STANDBY)


def test_a_claimed_resource_is_never_sent_to_a_non_owner() -> None:
    table = table_with(instance("b1", "acc_1", session="1"), instance("b2", session="2"))
    table.expire(TIMEOUT + 1)  # nobody heartbeated
    table.heartbeat("svc", "b2", "2", TIMEOUT + 1)
    with pytest.raises(NoHealthyInstanceError, match="instance 'b1', is unhealthy"):
        table.route("svc", "work", "acc_1")
    # b2 holds no claim on acc_1, but it took over the service's active role.
    assert table.route("svc", "work", "acc_9").instance_id == "b2"


def test_unclaimed_resources_stick_and_new_instances_do_not_steal_them() -> None:
    table = table_with(
        instance("b1", session="1", balanced=True), instance("b2", session="2", balanced=True)
    )
    first = {r: table.route("svc", "work", r).instance_id for r in map(str, range(10))}
    assert Counter(first.values()) == {"b1": 5, "b2": 5}  # least-assigned spreads them
    table.register(instance("b3", session="3", balanced=True), 0)
    assert {r: table.route("svc", "work", r).instance_id for r in first} == first
    assert table.route("svc", "work", "new").instance_id == "b3"


def test_an_assignment_moves_only_when_its_instance_is_unhealthy() -> None:
    table = table_with(
        instance("b1", session="1", balanced=True), instance("b2", session="2", balanced=True)
    )
    owner = table.route("svc", "work", "acc_1").instance_id
    other = "b2" if owner == "b1" else "b1"
    table.mark_unhealthy("svc", owner)
    moved = table.route("svc", "work", "acc_1")
    assert (moved.instance_id, moved.new_assignment) == (other, "acc_1")
    table.heartbeat("svc", owner, "1" if owner == "b1" else "2", 1.0)
    assert table.route("svc", "work", "acc_1").instance_id == other  # no fail-back


def test_calls_without_a_resource_go_round_robin_over_healthy_instances() -> None:
    table = table_with(*(instance(f"b{i}", session=str(i), balanced=True) for i in range(3)))
    assert [table.route("svc", "work", None).instance_id for _ in range(6)] == [
        "b0",
        "b1",
        "b2",
        "b0",
        "b1",
        "b2",
    ]


def test_unknown_service_method_and_no_healthy_instance_are_told_apart() -> None:
    table = table_with(instance("b1"))
    with pytest.raises(UnknownServiceError):
        table.route("other", "work", None)
    with pytest.raises(UnknownMethodError, match="has: work"):
        table.route("svc", "nope", None)
    table.expire(TIMEOUT + 0.1)
    with pytest.raises(NoHealthyInstanceError):
        table.route("svc", "work", None)


def test_a_live_instance_id_cannot_be_taken_but_a_dead_one_can() -> None:
    table = table_with(instance("b1", "acc_1", session="old"))
    with pytest.raises(InstanceConflictError):
        table.register(instance("b1", session="new"), 1.0)
    table.register(instance("b1", "acc_1", session="old"), 1.0)  # same process: idempotent
    table.expire(10.0)
    again = table.register(instance("b1", "acc_1", session="new"), 10.0)
    assert again.replaced is not None and again.record.health is Health.HEALTHY
    assert again.claimed == ("acc_1",)


def test_heartbeats_from_another_session_are_ignored() -> None:
    table = table_with(instance("b1", session="mine"))
    table.expire(TIMEOUT + 1)
    assert table.heartbeat("svc", "b1", "impostor", TIMEOUT + 1) is None
    assert table.get("svc", "b1").health is Health.UNHEALTHY  # type: ignore[union-attr]
    assert table.heartbeat("svc", "b1", "mine", TIMEOUT + 1) is not None


def test_deregistering_the_owner_hands_the_claim_to_the_next_claimant() -> None:
    table = table_with(instance("b1", "acc_1", session="1"), instance("b2", "acc_1", session="2"))
    table.deregister("svc", "b1")
    assert table.claims("svc") == {"acc_1": ["b2"]}
    assert table.route("svc", "work", "acc_1").instance_id == "b2"


@given(st.lists(st.sampled_from([f"acc_{i}" for i in range(20)]), min_size=1, max_size=200))
def test_a_resource_always_lands_on_the_same_instance_while_all_are_healthy(
    resources: list[str],
) -> None:
    table = table_with(*(instance(f"b{i}", session=str(i), balanced=True) for i in range(3)))
    placed: dict[str, str] = {}
    for resource in resources:
        chosen = table.route("svc", "work", resource).instance_id
        assert placed.setdefault(resource, chosen) == chosen


async def test_registry_persists_and_a_restarted_registry_routes_the_same_way() -> None:
    instances, routes, clock = (
        InMemoryInstanceRepository(),
        InMemoryRouteRepository(),
        FakeClock(100),
    )
    registry = InstanceRegistry(RoutingTable(TIMEOUT), instances, routes, clock)
    await registry.register(instance("b1", "acc_1", session="1", balanced=True))
    await registry.register(instance("b2", session="2", balanced=True))
    before = {r: (await registry.route("svc", "work", r)).instance_id for r in ("acc_1", "x", "y")}
    assert routes.claims == {("svc", "acc_1"): ["b1"]}
    assert set(routes.assignments) == {("svc", "x"), ("svc", "y")}

    clock.current = 500  # long after the last heartbeat: restore still gives a grace period
    restarted = InstanceRegistry(RoutingTable(TIMEOUT), instances, routes, clock)
    assert await restarted.restore() == 2
    assert await restarted.expire() == []
    assert restarted.table.assignments("svc") == registry.table.assignments("svc")
    assert restarted.table.claims("svc") == {"acc_1": ["b1"]}
    after = {r: (await restarted.route("svc", "work", r)).instance_id for r in before}
    assert after == before


async def test_writes_that_fail_leave_the_table_whole_and_the_sweep_saves_them() -> None:
    instances, routes = InMemoryInstanceRepository(), InMemoryRouteRepository()
    registry = InstanceRegistry(RoutingTable(TIMEOUT), instances, routes, FakeClock(0))
    await registry.register(instance("b1", session="1", balanced=True))
    await registry.register(instance("b2", session="2", balanced=True))
    routes.failing = True
    placed = (await registry.route("svc", "work", "acc_1")).instance_id
    assert (await registry.route("svc", "work", "acc_1")).instance_id == placed  # sticky
    tried = routes.attempts
    outcome = await registry.register(instance("b3", "acc_9", session="3", balanced=True))
    for resource in ("x", "y", "z"):
        await registry.route("svc", "work", resource)
    assert routes.attempts == tried  # the store is known down: nobody waits on it
    assert outcome.claimed == ("acc_9",)
    assert registry.pending_writes == 6 and routes.assignments == {}
    assert await registry.flush() is False  # still down
    routes.failing = False
    assert await registry.flush() is True
    assert registry.pending_writes == 0
    assert routes.assignments[("svc", "acc_1")] == placed and len(routes.assignments) == 4
    assert routes.claims == {("svc", "acc_9"): ["b3"]}
    assert "svc.b3" in instances.records


async def test_deregister_removes_record_claims_and_assignments() -> None:
    instances, routes = InMemoryInstanceRepository(), InMemoryRouteRepository()
    registry = InstanceRegistry(RoutingTable(TIMEOUT), instances, routes, FakeClock(0))
    await registry.register(instance("b1", "acc_1"))
    await registry.route("svc", "work", "x")
    await registry.deregister("svc", "b1")
    assert (instances.records, routes.claims, routes.assignments) == ({}, {}, {})


async def test_an_instance_silent_for_reap_after_is_removed_and_its_claim_passes_on() -> None:
    instances, routes, clock = InMemoryInstanceRepository(), InMemoryRouteRepository(), FakeClock(0)
    registry = InstanceRegistry(RoutingTable(TIMEOUT, reap_after=10), instances, routes, clock)
    await registry.register(instance("b1", "acc_1", session="1"))
    await registry.register(instance("b2", "acc_1", session="2"))
    clock.current = 5
    registry.table.heartbeat("svc", "b2", "2", 5)
    assert [r.instance_id for r in await registry.expire()] == ["b1"]  # unhealthy, kept
    # Failed over: b2 owns acc_1 and b1 queues behind it as a standby.
    assert registry.table.claims("svc") == {"acc_1": ["b2", "b1"]}
    clock.current = 11
    registry.table.heartbeat("svc", "b2", "2", 11)
    await registry.expire()  # b1 silent for 11 s: removed
    await registry.flush()
    assert registry.table.get("svc", "b1") is None
    b2 = registry.table.get("svc", "b2")
    assert b2 is not None and b2.role is Role.ACTIVE and b2.epoch > 2
    assert routes.claims == {("svc", "acc_1"): ["b2"]}
    assert set(instances.records) == {"svc.b2"}
    assert registry.table.route("svc", "work", "acc_1").instance_id == "b2"


async def test_a_new_leader_restores_every_instance_healthy_whatever_was_saved() -> None:
    instances, routes, clock = InMemoryInstanceRepository(), InMemoryRouteRepository(), FakeClock(0)
    registry = InstanceRegistry(RoutingTable(TIMEOUT), instances, routes, clock)
    await registry.register(instance("b1", "acc_1", session="1"))
    clock.current = 10  # the old leader was cut off and saw no heartbeats
    await registry.expire()
    await registry.flush()
    assert instances.records["svc.b1"].health is Health.UNHEALTHY
    restarted = InstanceRegistry(RoutingTable(TIMEOUT), instances, routes, clock)
    await restarted.restore()
    assert restarted.table.route("svc", "work", "acc_1").instance_id == "b1"
