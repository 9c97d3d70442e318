"""Handovers never let two instances run one role's calls at once: promote and stop wait
for the calls in flight (or change nothing), and concurrent handovers are serialised.
Found by an adversarial review; each test failed before the fix."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from ipc_client_sdk import CallContext, IPCClient, IPCError, RemoteError, Service
from ipc_client_sdk.protocol import ErrorCode
from ipc_router.application.registry import InstanceRegistry
from ipc_router.domain import RoutingTable
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import RouterProcess, eventually, until
from ipc_testing.fakes import InMemoryInstanceRepository, InMemoryRouteRepository, make_instance

Run = tuple[str, str, float, float, str]  # instance, call_id, started, ended, role


class Req(BaseModel):
    delay: float


class Res(BaseModel):
    who: str


def timed_service(log: list[Run]) -> Service:
    svc = Service("svc")

    @svc.method("work")
    async def work(req: Req, ctx: CallContext) -> Res:
        start = time.monotonic()
        try:
            await asyncio.sleep(req.delay)
        finally:
            role = ctx.resource_id or "service"
            log.append((ctx.instance_id, ctx.call_id, start, time.monotonic(), role))
        return Res(who=ctx.instance_id)

    return svc


async def draining(caller: IPCClient, instance_id: str) -> None:
    """Passes once the router routes nothing new to ``instance_id``: it drains, or has left."""
    infos = await caller.admin.instances("svc")
    assert all(i.draining for i in infos if i.instance_id == instance_id), infos


def overlapping(log: list[Run]) -> list[tuple[Run, Run]]:
    """Runs of one role (the service's, or one resource's) on two different instances
    that were going at the same time."""
    return [
        (a, b)
        for a in log
        for b in log
        if a[4] == b[4] and a[0] < b[0] and a[2] < b[3] and b[2] < a[3]
    ]


async def test_a_promote_whose_drain_runs_out_changes_nothing(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    log: list[Run] = []
    svc = timed_service(log)
    async with (
        IPCClient(nats_server.url, name="a") as ca,
        IPCClient(nats_server.url, name="b") as cb,
        IPCClient(nats_server.url, name="caller") as caller,
    ):
        a = await ca.serve(svc, instance_id="a")
        b = await cb.serve(svc, instance_id="b")
        long = asyncio.create_task(caller.call("svc.work", Req(delay=2.0), timeout=10, returns=Res))
        await until(lambda: a.inflight == 1)
        with pytest.raises(RemoteError) as refused:
            await caller.admin.promote("svc", "b", drain=0.5)
        assert refused.value.code is ErrorCode.FAILED_PRECONDITION
        assert "in flight" in refused.value.message
        after = await caller.call("svc.work", Req(delay=0.1), timeout=10, returns=Res)
        assert after.who == "a" and (await long).who == "a"
        assert (a.role, b.role) == ("active", "standby")
        promoted = await caller.admin.promote("svc", "b", drain=5)  # idle now: it works
        assert promoted.demoted == ["a"]
        assert (await caller.call("svc.work", Req(delay=0), returns=Res)).who == "b"
    assert not overlapping(log)


async def test_a_stop_that_runs_out_of_time_hands_over_only_after_cancelling(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    log: list[Run] = []
    svc = timed_service(log)
    async with (
        IPCClient(nats_server.url, name="a") as ca,
        IPCClient(nats_server.url, name="b") as cb,
        IPCClient(nats_server.url, name="caller") as caller,
    ):
        a = await ca.serve(svc, instance_id="a")
        await cb.serve(svc, instance_id="b")
        long = asyncio.create_task(caller.call("svc.work", Req(delay=3.0), timeout=10))
        await until(lambda: a.inflight == 1)
        stopping = asyncio.create_task(a.stop(timeout=1.5))
        await eventually(lambda: draining(caller, "a"), interval=0.02)
        second = await caller.call("svc.work", Req(delay=0.3), timeout=10, returns=Res)
        await stopping
        with pytest.raises(RemoteError) as aborted:
            await long
    assert second.who == "b"
    assert aborted.value.code is ErrorCode.ABORTED
    assert not overlapping(log), overlapping(log)


async def test_concurrent_promotes_are_serialised(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    log: list[Run] = []
    svc = timed_service(log)
    async with (
        IPCClient(nats_server.url, name="a") as ca,
        IPCClient(nats_server.url, name="b") as cb,
        IPCClient(nats_server.url, name="c") as cc,
        IPCClient(nats_server.url, name="d") as cd,
        IPCClient(nats_server.url, name="caller") as caller,
    ):
        a = await ca.serve(svc, instance_id="a")
        await cb.serve(svc, instance_id="b")
        d = await cd.serve(svc, instance_id="d", resources=["R"])
        await cc.serve(svc, instance_id="c", resources=["R"])
        long_a = asyncio.create_task(caller.call("svc.work", Req(delay=1.0), timeout=10))
        long_d = asyncio.create_task(
            caller.call("svc.work", Req(delay=2.0), resource_id="R", timeout=10)
        )
        await until(lambda: a.inflight == 1 and d.inflight == 1)
        to_c = asyncio.create_task(caller.admin.promote("svc", "c", drain=10))
        await eventually(lambda: draining(caller, "a"), interval=0.02)  # to_c is under way
        to_b = asyncio.create_task(caller.admin.promote("svc", "b", drain=10))
        calls = [
            asyncio.create_task(caller.call("svc.work", Req(delay=0.5), timeout=15))
            for _ in range(4)
        ]
        outcomes = await asyncio.gather(to_c, to_b, *calls, long_a, long_d, return_exceptions=True)
    unexpected = [
        o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, IPCError)
    ]
    assert not unexpected, unexpected
    assert not overlapping(log), overlapping(log)


class SteppedClock:
    """The wall clock jumps (an NTP step); the monotonic one does not."""

    def __init__(self) -> None:
        self.wall = 1_000.0
        self.steady = 50.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.steady


async def test_a_step_of_the_wall_clock_expires_nobody() -> None:
    clock = SteppedClock()
    registry = InstanceRegistry(
        RoutingTable(1.5), InMemoryInstanceRepository(), InMemoryRouteRepository(), clock
    )
    for name in ("a", "b"):
        await registry.register(make_instance("svc", name, session=name, methods=("work",)))
    clock.wall += 30  # the system clock is stepped forward
    clock.steady += 0.5
    assert await registry.expire() == []
    assert registry.table.route("svc", "work", None).instance_id == "a"


async def test_a_promote_behind_another_handover_is_refused_and_never_runs_later(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    log: list[Run] = []
    svc = timed_service(log)
    async with (
        IPCClient(nats_server.url, name="a") as ca,
        IPCClient(nats_server.url, name="b") as cb,
        IPCClient(nats_server.url, name="c") as cc,
        IPCClient(nats_server.url, name="caller") as caller,
    ):
        a = await ca.serve(svc, instance_id="a")
        b = await cb.serve(svc, instance_id="b")
        c = await cc.serve(svc, instance_id="c")
        long = asyncio.create_task(caller.call("svc.work", Req(delay=1.5), timeout=10))
        await until(lambda: a.inflight == 1)
        first = asyncio.create_task(caller.admin.promote("svc", "b", drain=10))
        await eventually(lambda: draining(caller, "a"), interval=0.02)  # first holds the lock
        with pytest.raises(RemoteError) as refused:
            await caller.admin.promote("svc", "c", drain=0.5)
        assert refused.value.code is ErrorCode.ABORTED
        assert "another handover" in refused.value.message
        assert (await first).instance_id == "b"
        await long
        await asyncio.sleep(1.0)  # the refused one must not run now that the lock is free
        assert (b.role, c.role) == ("active", "standby")
        assert (await caller.call("svc.work", Req(delay=0), returns=Res)).who == "b"
    assert not overlapping(log)


async def test_a_handover_waits_for_a_handler_that_outlived_its_callers_deadline(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    log: list[Run] = []
    svc = timed_service(log)
    async with (
        IPCClient(nats_server.url, name="a") as ca,
        IPCClient(nats_server.url, name="b") as cb,
        IPCClient(nats_server.url, name="caller") as caller,
    ):
        await ca.serve(svc, instance_id="a")
        await cb.serve(svc, instance_id="b")
        with pytest.raises(IPCError):  # the caller gives up; the handler runs on
            await caller.call("svc.work", Req(delay=2.0), timeout=0.5)
        promoted = await caller.admin.promote("svc", "b", drain=10)
        assert promoted.instance_id == "b"
        assert (await caller.call("svc.work", Req(delay=0), returns=Res)).who == "b"
    assert not overlapping(log), overlapping(log)
