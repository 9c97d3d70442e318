"""Roles, failover, handover and epochs in the routing table: pure rules, no I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ipc_router.application.registry import InstanceRegistry
from ipc_router.domain import (
    FailoverPendingError,
    Health,
    InstanceRecord,
    NoHealthyInstanceError,
    Role,
    RoutingTable,
)
from ipc_testing.fakes import (
    FakeClock,
    InMemoryInstanceRepository,
    InMemoryRouteRepository,
    make_instance,
)

TIMEOUT = 1.5


def instance(instance_id: str, *resources: str) -> InstanceRecord:
    return make_instance(
        "svc", instance_id, resources=resources, methods=("work",), session=instance_id
    )


def three() -> RoutingTable:
    table = RoutingTable(TIMEOUT)
    for name in ("b1", "b2", "b3"):
        table.register(instance(name, "acc_1"), 0.0)
    table.take_events()
    return table


def roles(table: RoutingTable) -> dict[str, str]:
    return {r.instance_id: r.role.value for r in table.instances()}


def beat_all_but(table: RoutingTable, silent: str, now: float) -> None:
    for record in table.instances():
        if record.instance_id != silent:
            table.heartbeat("svc", record.instance_id, record.instance_id, now)


def test_first_registered_is_active_and_the_rest_queue_in_order() -> None:
    table = three()
    assert roles(table) == {"b1": "active", "b2": "standby", "b3": "standby"}
    assert table.claims("svc") == {"acc_1": ["b1", "b2", "b3"]}
    assert table.route("svc", "work", None).instance_id == "b1"  # active/standby by default
    assert table.route("svc", "work", "anything").instance_id == "b1"


def test_a_silent_active_is_failed_over_to_the_first_standby_with_new_epochs() -> None:
    table = three()
    epochs = {r.instance_id: r.epoch for r in table.instances()}
    beat_all_but(table, "b1", 1.0)
    assert table.expire(1.4) == []  # b1 heard from at 0: not yet
    beat_all_but(table, "b1", 1.6)
    assert [r.instance_id for r in table.expire(1.6)] == ["b1"]
    assert roles(table) == {"b2": "active", "b3": "standby", "b1": "standby"}
    assert [r.instance_id for r in table.instances()] == ["b2", "b3", "b1"]  # b1 at the back
    assert table.claims("svc") == {"acc_1": ["b2", "b3", "b1"]}
    b1, b2 = table.get("svc", "b1"), table.get("svc", "b2")
    assert b1 is not None and b2 is not None
    assert b2.epoch > epochs["b2"] and b1.epoch > epochs["b1"]
    assert max(epochs.values()) < min(b1.epoch, b2.epoch)  # above every epoch used before
    events = table.take_events()
    assert {(e.instance_id, e.role, e.resource, e.reason) for e in events} == {
        ("b2", Role.ACTIVE, None, "failover"),
        ("b1", Role.STANDBY, None, "failover"),
        ("b2", Role.ACTIVE, "acc_1", "failover"),
        ("b1", Role.STANDBY, "acc_1", "failover"),
    }
    route = table.route("svc", "work", "acc_1")
    assert (route.instance_id, route.epoch) == ("b2", table.get("svc", "b2").epoch)  # type: ignore[union-attr]


def test_the_former_active_comes_back_as_a_standby_without_fail_back() -> None:
    table = three()
    beat_all_but(table, "b1", 1.6)
    table.expire(1.6)
    table.take_events()
    assert table.heartbeat("svc", "b1", "b1", 2.0) is not None  # healthy again
    assert roles(table)["b1"] == "standby" and roles(table)["b2"] == "active"
    assert table.route("svc", "work", "acc_1").instance_id == "b2"
    assert table.take_events() == []


def test_an_unreachable_active_is_not_failed_over_before_its_timeout_and_calls_wait() -> None:
    table = three()
    beat_all_but(table, "b1", 0.5)
    table.mark_unhealthy("svc", "b1")  # no responders on its inbox
    table.expire(1.0)
    assert roles(table)["b1"] == "active"  # its lease may still run: nobody takes over yet
    with pytest.raises(FailoverPendingError):
        table.route("svc", "work", "acc_1")
    beat_all_but(table, "b1", 1.6)
    table.expire(1.6)
    assert table.route("svc", "work", "acc_1").instance_id == "b2"


def test_without_a_healthy_standby_the_active_keeps_its_role_and_calls_are_refused() -> None:
    table = RoutingTable(TIMEOUT)
    table.register(instance("b1", "acc_1"), 0.0)
    epoch = table.get("svc", "b1").epoch  # type: ignore[union-attr]
    table.expire(2.0)
    with pytest.raises(NoHealthyInstanceError) as caught:
        table.route("svc", "work", "acc_1")
    assert not isinstance(caught.value, FailoverPendingError)
    table.heartbeat("svc", "b1", "b1", 2.1)
    route = table.route("svc", "work", "acc_1")
    assert (route.instance_id, route.epoch) == ("b1", epoch)  # no role change, no new epoch


def test_a_standby_that_registers_late_takes_over_a_failed_active() -> None:
    table = RoutingTable(TIMEOUT)
    table.register(instance("b1"), 0.0)
    table.expire(2.0)
    table.register(instance("b2"), 2.0)
    table.expire(2.1)
    assert roles(table) == {"b2": "active", "b1": "standby"}


def test_a_draining_active_gets_no_calls_and_its_roles_move_when_it_leaves() -> None:
    table = three()
    table.drain("svc", "b1")
    with pytest.raises(FailoverPendingError):
        table.route("svc", "work", "acc_1")
    with pytest.raises(FailoverPendingError):
        table.route("svc", "work", None)
    table.deregister("svc", "b1", 0.1)
    assert roles(table) == {"b2": "active", "b3": "standby"}
    assert table.route("svc", "work", "acc_1").instance_id == "b2"
    assert {(e.instance_id, e.resource) for e in table.take_events()} == {
        ("b2", None),
        ("b2", "acc_1"),
    }


def test_a_manual_promotion_moves_every_role_the_target_can_take() -> None:
    table = RoutingTable(TIMEOUT)
    table.register(instance("b1", "acc_1", "acc_2"), 0.0)
    table.register(instance("b2", "acc_1"), 0.0)
    assert table.actives_of("svc", "b2") == ["b1"]
    table.promote("svc", "b2", 0.5)
    assert roles(table) == {"b2": "active", "b1": "standby"}
    assert table.claims("svc") == {"acc_1": ["b2", "b1"], "acc_2": ["b1"]}
    assert table.owned("svc", "b1") == ("acc_2",)  # b2 never claimed acc_2
    table.expire(1.0)  # both silent for 1 s: nothing expires
    table.heartbeat("svc", "b1", "b1", 1.0)
    table.heartbeat("svc", "b2", "b2", 1.0)
    assert table.route("svc", "work", "acc_2").instance_id == "b1"
    assert table.route("svc", "work", None).instance_id == "b2"


def test_promoting_an_unhealthy_instance_is_refused() -> None:
    table = three()
    beat_all_but(table, "b3", 1.6)
    table.expire(1.6)
    with pytest.raises(NoHealthyInstanceError):
        table.promote("svc", "b3", 1.6)


def test_a_load_balanced_service_spreads_calls_but_claimed_resources_still_fail_over() -> None:
    table = RoutingTable(TIMEOUT)
    for name in ("b1", "b2"):
        table.register(
            make_instance(
                "svc",
                name,
                resources=("acc_1",),
                methods=("work",),
                session=name,
                load_balanced=True,
            ),
            0.0,
        )
    assert {table.route("svc", "work", None).instance_id for _ in range(4)} == {"b1", "b2"}
    table.heartbeat("svc", "b2", "b2", 1.6)
    table.expire(1.6)
    assert table.route("svc", "work", "acc_1").instance_id == "b2"


def test_an_instance_ahead_of_the_table_gets_a_new_epoch_above_both() -> None:
    table = three()
    b2 = table.get("svc", "b2")
    assert b2 is not None
    table.heartbeat("svc", "b2", "b2", 0.5, epoch=b2.epoch + 10)  # a lost save
    again = table.get("svc", "b2")
    assert again is not None and again.epoch > b2.epoch + 10
    assert [e.reason for e in table.take_events()] == ["resync"]


async def test_roles_and_epochs_survive_a_restart_and_nothing_fails_over_in_the_grace() -> None:
    instances, routes, clock = InMemoryInstanceRepository(), InMemoryRouteRepository(), FakeClock(0)
    registry = InstanceRegistry(RoutingTable(TIMEOUT), instances, routes, clock)
    for name in ("b1", "b2"):
        await registry.register(instance(name, "acc_1"))
    clock.current = 1.0
    registry.table.heartbeat("svc", "b2", "b2", 1.0)
    clock.current = 1.6
    await registry.expire()  # b1 failed over to b2
    await registry.flush()
    saved = {r.instance_id: (r.role, r.epoch) for r in registry.table.instances()}

    clock.current = 100.0  # restarted long after: every instance silent for ages
    restarted = InstanceRegistry(RoutingTable(TIMEOUT), instances, routes, clock)
    await restarted.restore()
    assert {r.instance_id: (r.role, r.epoch) for r in restarted.table.instances()} == saved
    assert all(r.health is Health.HEALTHY for r in restarted.table.instances())
    clock.current = 100.0 + 2 * TIMEOUT - 0.1
    assert await restarted.expire() == []  # the grace: no spurious failover
    assert restarted.table.route("svc", "work", "acc_1").instance_id == "b2"
    clock.current = 100.0 + 2 * TIMEOUT + 0.1
    assert {r.instance_id for r in await restarted.expire()} == {"b1", "b2"}
    registered = await restarted.register(instance("b3"))
    assert registered.record.epoch > max(epoch for _, epoch in saved.values())


def test_a_claim_passes_to_the_first_healthy_claimant_when_its_owner_leaves() -> None:
    table = three()
    beat_all_but(table, "b2", 1.0)
    table.mark_unhealthy("svc", "b2")
    table.deregister("svc", "b1", 1.0)
    assert table.claims("svc")["acc_1"][0] == "b3"  # b2 is unhealthy: skipped
    assert table.route("svc", "work", "acc_1").instance_id == "b3"


def test_epochs_never_go_back_even_when_a_service_starts_over() -> None:
    table = three()
    highest = max(r.epoch for r in table.instances())
    for name in ("b1", "b2", "b3"):
        table.deregister("svc", name, 1.0)
    again = table.register(instance("b9"), 2.0)
    assert again.record.epoch > highest


def test_an_active_standby_service_never_spreads_calls_when_it_has_no_active() -> None:
    table = three()
    for name in ("b1", "b2", "b3"):
        table.drain("svc", name)
    table.deregister("svc", "b1", 0.5)  # nobody can take over: all drain
    with pytest.raises(NoHealthyInstanceError):
        table.route("svc", "work", None)
    table.undrain("svc", "b3", 0.6)
    assert table.route("svc", "work", None).instance_id == "b3"
    assert roles(table)["b3"] == "active"


def test_promote_refuses_a_draining_instance() -> None:
    table = three()
    table.drain("svc", "b2")
    with pytest.raises(NoHealthyInstanceError, match="draining"):
        table.promote("svc", "b2", 0.5)


def test_restore_keeps_the_latest_promotion_and_announces_what_it_changes() -> None:
    old = RoutingTable(TIMEOUT)
    for name in ("b1", "b2", "b3"):
        old.register(instance(name, "acc_1"), 0.0)
    b1, b2 = old.get("svc", "b1"), old.get("svc", "b2")
    assert b1 is not None and b2 is not None
    # A leader died mid-change: b2's promotion was saved, b1's demotion was not, and the
    # saved claim still names b0, which is gone.
    records = [b1, replace(b2, role=Role.ACTIVE, epoch=9), old.get("svc", "b3")]
    claims = {("svc", "acc_1"): ["b0", "b2", "b1", "b3"]}
    table = RoutingTable(TIMEOUT)
    table.restore([r for r in records if r is not None], claims, {}, 100.0)
    assert roles(table) == {"b1": "standby", "b2": "active", "b3": "standby"}
    restored_b1 = table.get("svc", "b1")
    assert restored_b1 is not None and restored_b1.epoch > 9
    assert table.claims("svc") == {"acc_1": ["b2", "b1", "b3"]}
    assert {(e.instance_id, e.role, e.resource) for e in table.take_events()} == {
        ("b1", Role.STANDBY, None),
        ("b2", Role.ACTIVE, "acc_1"),
    }
