"""The handover use case with fakes and no NATS: one handover at a time per service, a
promote behind another is refused rather than queued, and a drain that runs out changes
nothing."""

from __future__ import annotations

import asyncio

import pytest

from ipc_router.application import handover
from ipc_router.application.errors import DrainTimeoutError, HandoverBusyError
from ipc_router.application.handover import Handovers
from ipc_router.application.inflight import InflightTracker
from ipc_router.application.membership import HeartbeatReports, Membership
from ipc_router.application.registry import InstanceRegistry
from ipc_router.domain import InstanceRecord, RoutingTable
from ipc_testing.fakes import (
    FakeClock,
    InMemoryInstanceRepository,
    InMemoryRouteRepository,
    make_instance,
)


class RecordingNotifier:
    """``InstanceNotifier`` that keeps what each instance was told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, bool]] = []

    async def tell(self, record: InstanceRecord, owned: tuple[str, ...] | None) -> None:
        self.told.append((record.instance_id, record.draining))


class Fixture:
    def __init__(self) -> None:
        self.clock = FakeClock(0.0)
        self.registry = InstanceRegistry(
            RoutingTable(1.5), InMemoryInstanceRepository(), InMemoryRouteRepository(), self.clock
        )
        self.tracker = InflightTracker()
        reports = HeartbeatReports()
        self.membership = Membership(self.registry, reports)
        self.notifier = RecordingNotifier()
        self.handovers = Handovers(self.registry, self.tracker, reports, self.notifier)

    async def register(self, service: str, *names: str) -> None:
        for name in names:
            await self.registry.register(make_instance(service, name, session=name))

    async def beat(self, service: str, instance_id: str, *, running: int = 0) -> None:
        """A heartbeat, heard a moment later than anything before it."""
        self.clock.current += 0.1
        await self.membership.heartbeat(
            service, instance_id, session=instance_id, epoch=None, running=running, draining=True
        )

    def role(self, service: str, instance_id: str) -> str:
        record = self.registry.table.get(service, instance_id)
        assert record is not None
        return record.role.value

    def record(self, service: str, instance_id: str) -> InstanceRecord:
        record = self.registry.table.get(service, instance_id)
        assert record is not None
        return record


async def draining(f: Fixture, service: str, instance_id: str) -> None:
    """Wait until the handover under way has drained ``instance_id`` (it holds the lock)."""
    for _ in range(100):
        if f.record(service, instance_id).draining:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{instance_id} was never drained")


@pytest.fixture
async def f() -> Fixture:
    fixture = Fixture()
    await fixture.register("svc", "b1", "b2")
    await fixture.register("other", "c1", "c2")
    return fixture


async def test_a_promote_waits_for_the_outgoing_active_to_be_idle(f: Fixture) -> None:
    f.tracker.add("svc", "b1")
    promote = asyncio.create_task(f.handovers.promote("svc", "b2", drain=5.0))
    await draining(f, "svc", "b1")
    await f.beat("svc", "b1")  # idle there, but this router still has a call in flight
    await asyncio.sleep(0.1)
    assert not promote.done() and f.role("svc", "b1") == "active"
    f.tracker.done("svc", "b1")
    promoted = await asyncio.wait_for(promote, 2.0)
    assert promoted.demoted == ["b1"] and promoted.record.instance_id == "b2"
    assert (f.role("svc", "b1"), f.role("svc", "b2")) == ("standby", "active")
    assert not f.record("svc", "b1").draining
    assert f.notifier.told[0] == ("b1", True) and f.notifier.told[-1] == ("b1", False)


async def test_one_handover_at_a_time_per_service(
    f: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handover, "DRAIN_LOCK_WAIT", 0.1)
    f.tracker.add("svc", "b1")
    first = asyncio.create_task(f.handovers.promote("svc", "b2", drain=5.0))
    await draining(f, "svc", "b1")
    with pytest.raises(HandoverBusyError):  # a drain of the same service is refused
        await f.handovers.drain(f.record("svc", "b2"), timeout=1.0)
    assert not f.record("svc", "b2").draining
    # Another service's handover is not held up by it.
    other = asyncio.create_task(f.handovers.promote("other", "c2", drain=2.0))
    await draining(f, "other", "c1")
    await f.beat("other", "c1")
    await asyncio.wait_for(other, 2.0)
    assert f.role("other", "c2") == "active"
    assert not first.done()
    f.tracker.done("svc", "b1")
    await f.beat("svc", "b1")
    await asyncio.wait_for(first, 2.0)
    assert f.role("svc", "b2") == "active"


async def test_a_promote_behind_another_is_refused_not_queued(f: Fixture) -> None:
    await f.register("svc", "b3")
    f.tracker.add("svc", "b1")
    first = asyncio.create_task(f.handovers.promote("svc", "b2", drain=5.0))
    await draining(f, "svc", "b1")
    with pytest.raises(HandoverBusyError, match="another handover of 'svc' is under way"):
        await f.handovers.promote("svc", "b3", drain=0.2)
    f.tracker.done("svc", "b1")
    await f.beat("svc", "b1")
    await asyncio.wait_for(first, 2.0)
    await asyncio.sleep(0.1)  # a queued promote would run now
    assert (f.role("svc", "b2"), f.role("svc", "b3")) == ("active", "standby")


async def test_a_drain_that_runs_out_changes_nothing(f: Fixture) -> None:
    before = {r.key: (r.role, r.epoch, r.draining) for r in f.registry.table.instances()}
    f.tracker.add("svc", "b1")
    with pytest.raises(DrainTimeoutError, match="still has 1 calls in flight after 0.2s"):
        await f.handovers.promote("svc", "b2", drain=0.2)
    after = {r.key: (r.role, r.epoch, r.draining) for r in f.registry.table.instances()}
    assert after == before
    assert f.notifier.told == [("b1", True), ("b1", False)]  # told, then told it is over


async def test_a_drain_runs_out_while_the_instance_still_runs_a_call(f: Fixture) -> None:
    """No call in flight from this router, but the instance's own heartbeat says a handler
    still runs there (its caller gave up on it): nothing moves."""
    promote = asyncio.create_task(f.handovers.promote("svc", "b2", drain=0.3))
    await draining(f, "svc", "b1")
    await f.beat("svc", "b1", running=1)
    with pytest.raises(DrainTimeoutError):
        await promote
    assert (f.role("svc", "b1"), f.role("svc", "b2")) == ("active", "standby")
    assert not f.record("svc", "b1").draining


async def drain_when_idle(f: Fixture, service: str, instance_id: str) -> handover.Drained:
    """Drain an instance that runs no call, and hand its roles over."""
    drain = asyncio.create_task(f.handovers.drain(f.record(service, instance_id), timeout=2.0))
    await draining(f, service, instance_id)
    while not drain.done():  # idle once a heartbeat after the handover began says so
        await f.beat(service, instance_id)
        await asyncio.sleep(handover._POLL)
    return drain.result()


async def test_a_drain_hands_the_roles_to_a_standby(f: Fixture) -> None:
    drained = await drain_when_idle(f, "svc", "b1")
    assert (drained.drained, drained.reason) == (True, None)
    assert (f.role("svc", "b1"), f.role("svc", "b2")) == ("standby", "active")


async def test_a_drain_with_only_a_draining_standby_is_not_drained_and_says_why(
    f: Fixture,
) -> None:
    standby = await drain_when_idle(f, "svc", "b2")  # a standby holds no role to hand over
    assert standby.drained is True
    drained = await drain_when_idle(f, "svc", "b1")
    assert drained.drained is False
    assert drained.reason == (
        "no healthy standby that is not draining can take over: b1 is still the active of svc"
    )
    assert drained.record.role.value == "active" and f.role("svc", "b1") == "active"


async def test_a_drain_whose_calls_outlast_the_wait_says_so(f: Fixture) -> None:
    f.tracker.add("svc", "b1")
    drained = await f.handovers.drain(f.record("svc", "b1"), timeout=0.2)
    assert drained.drained is False
    assert drained.reason == "1 call(s) still in flight after 0.2s"
    await f.handovers.close()
