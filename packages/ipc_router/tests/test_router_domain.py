"""Domain and application units, with fakes and no I/O."""

from __future__ import annotations

from ipc_router.application.ports import BrokerInfo
from ipc_router.application.status import GetRouterStatus, RouterIdentity
from ipc_router.domain import InstanceRecord, RegistryCounts, Role
from ipc_testing.fakes import FakeBroker, FakeClock, InMemoryInstanceRepository, make_instance


def record(service: str, instance: str, role: Role = Role.STANDBY) -> InstanceRecord:
    return make_instance(service, instance, role=role)


def test_counts_distinct_services_and_instances() -> None:
    records = [record("b", "b1", Role.ACTIVE), record("b", "b2"), record("c", "c1")]
    assert RegistryCounts.of(records) == RegistryCounts(services=2, instances=3)
    assert RegistryCounts.of([]) == RegistryCounts(services=0, instances=0)


def test_same_instance_counted_once() -> None:
    assert RegistryCounts.of([record("b", "b1"), record("b", "b1")]).instances == 1


def test_instance_key_joins_service_and_id() -> None:
    assert record("service_b", "b1").key == "service_b.b1"


BROKER = BrokerInfo(
    server_id="N1",
    server_name="n1",
    version="2.15.1",
    cluster=None,
    connected_url="nats://127.0.0.1:4222",
    jetstream=True,
    embedded=False,
)


async def test_status_reports_identity_uptime_broker_and_counts() -> None:
    identity = RouterIdentity(
        router_id="r1", version="0.1.0", subject_prefix="ipc", started_at=100.0
    )
    clock = FakeClock(now=142.5)
    repo = InMemoryInstanceRepository([record("b", "b1"), record("c", "c1")])
    query = GetRouterStatus(identity, repo, FakeBroker(BROKER), clock)

    report = await query()

    assert report.identity is identity
    assert report.uptime_s == 42.5
    assert report.broker == BROKER
    assert report.counts == RegistryCounts(services=2, instances=2)

    clock.current = 150.0
    repo.records.clear()
    later = await query()
    assert later.uptime_s == 50.0
    assert later.counts == RegistryCounts(services=0, instances=0)


async def test_uptime_never_negative_when_the_clock_steps_back() -> None:
    identity = RouterIdentity(router_id="r1", version="0", subject_prefix="ipc", started_at=100.0)
    query = GetRouterStatus(
        identity, InMemoryInstanceRepository(), FakeBroker(BROKER), FakeClock(now=90.0)
    )
    assert (await query()).uptime_s == 0.0
