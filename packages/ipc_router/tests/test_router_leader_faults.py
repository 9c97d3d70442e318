"""Fault tests: the leading router is killed (-9) or frozen (SIGSTOP) under a call load
made with the SDK's default timeout; a standby router takes over, no call fails, none runs
twice, and a frozen leader that wakes steps down without routing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import nats
import pytest
from nats.aio.msg import Msg

from ipc_client_sdk import CodecError, IPCClient, IPCError
from ipc_client_sdk.protocol import CallRequest, Codec, Subjects
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import RouterProcess, until
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

pytestmark = pytest.mark.slow  # router processes, lease expiry


@dataclass
class Load:
    """Callers making calls with their own call ids and the client's default timeout."""

    caller: IPCClient
    sent: dict[str, float] = field(default_factory=dict)  # call_id -> monotonic send time
    answered: dict[str, float] = field(default_factory=dict)  # call_id -> when answered
    failed: list[tuple[str, IPCError]] = field(default_factory=list)
    running: bool = True

    async def worker(self, w: int) -> None:
        i = 0
        while self.running:
            i += 1
            call_id = f"w{w}-{i}"
            request = WorkRequest(
                account=f"acc_{i % 5}", amount=Decimal(i) / 100, placed_at=datetime.now(UTC)
            )
            self.sent[call_id] = time.monotonic()
            try:
                result = await self.caller.call(
                    "service_b.do_work",
                    request,
                    resource_id=request.account,
                    call_id=call_id,
                    returns=WorkResult,
                )
            except IPCError as e:
                self.failed.append((call_id, e))
            else:
                assert result.call_id == call_id
                self.answered[call_id] = time.monotonic()

    def answered_after(self, t: float) -> int:
        return sum(1 for sent in self.answered.values() if sent > t)


@asynccontextmanager
async def _loaded(url: str, svc: CountingService) -> AsyncIterator[tuple[IPCClient, Load]]:
    async with (
        IPCClient(url, name="svc_b") as server,
        IPCClient(url, name="svc_a") as caller,
    ):
        await server.serve(svc.service, instance_id="b1", concurrency=64)
        load = Load(caller)
        workers = [asyncio.create_task(load.worker(w)) for w in range(8)]
        try:
            yield caller, load
        finally:
            load.running = False
            await asyncio.gather(*workers)


async def test_a_leader_killed_under_load_hands_over_with_no_call_failed_or_run_twice(
    nats_server: NatsServerProcess, router: RouterProcess, standby: RouterProcess
) -> None:
    svc = CountingService()
    async with _loaded(nats_server.url, svc) as (caller, load):
        await until(lambda: len(load.answered) >= 50, within=30)
        since = standby.log_size()
        router.kill()
        killed = time.monotonic()
        assert await standby.wait_for_output("second leads", since=since, timeout=20)
        await until(lambda: load.answered_after(killed) >= 50, within=30)
        status = await caller.admin.status()
        assert (status.router_id, status.leader) == ("second", True)
    assert load.failed == []
    assert set(load.answered) == set(load.sent)
    # Every call ran exactly once, including those the dead leader had taken.
    assert set(svc.runs) == set(load.sent)
    assert set(svc.runs.values()) == {1}


@dataclass
class Deliveries:
    """Every call request sent to an instance, by the router that forwarded it."""

    codec: Codec = field(default_factory=Codec)
    by_router: dict[str, list[str]] = field(default_factory=dict)  # router id -> call_ids

    async def seen(self, msg: Msg) -> None:
        try:
            request = self.codec.decode_envelope(msg.data, CallRequest)
        except CodecError:
            return  # an instance's control message, not a call
        router = request.router or ""
        self.by_router.setdefault(router, []).append(request.call_id)


@pytest.fixture(params=["off", "on"], ids=["leader-routes", "standbys-route"])
def standby_routing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both routers started with standby routing off (only the leader routes) or on."""
    monkeypatch.setenv("IPC_STANDBY_ROUTING", request.param)
    return bool(request.param == "on")


async def test_a_frozen_leader_is_replaced_and_when_it_wakes_steps_down_without_routing(
    standby_routing: bool,
    nats_server: NatsServerProcess,
    router: RouterProcess,
    standby: RouterProcess,
) -> None:
    svc = CountingService()
    deliveries = Deliveries()
    sniffer = await nats.connect(nats_server.url)
    try:
        await sniffer.subscribe(f"{Subjects().prefix}.inst.>", cb=deliveries.seen)
        async with _loaded(nats_server.url, svc) as (_, load):
            await until(lambda: len(load.answered) >= 50, within=30)
            await sniffer.flush()
            # Only the leader routes, or both routers share the calls.
            assert len(deliveries.by_router) == (2 if standby_routing else 1)
            first_router = router.router_id
            since, first_since = standby.log_size(), router.log_size()
            router.pause()
            paused = time.monotonic()
            assert await standby.wait_for_output("second leads", since=since, timeout=20)
            await until(lambda: load.answered_after(paused) >= 50, within=30)
            router.resume()
            assert await router.wait_for_output(
                "test-router stops routing", since=first_since, timeout=20
            ), router.log_tail()
            resumed = time.monotonic()
            await until(lambda: load.answered_after(resumed) >= 50, within=30)
        await sniffer.flush()
    finally:
        await sniffer.close()
    assert load.failed == []
    assert set(svc.runs) == set(load.sent) == set(load.answered)
    assert set(svc.runs.values()) == {1}
    if not standby_routing:
        # The frozen leader routed nothing that reached it after it froze: those calls went
        # to the new leader (calls it had taken before may still have left its socket on
        # waking). With standby routing it routes again once awake, from a fresh copy of
        # the table, as a standby.
        sent_after_pause = {call_id for call_id, at in load.sent.items() if at > paused}
        assert not sent_after_pause & set(deliveries.by_router[first_router])
    assert len(deliveries.by_router) == 2
    # Each router led once: the frozen one did not take the lease back.
    assert router.log_since(0).decode().count("test-router leads") == 1
    assert standby.log_since(0).decode().count("second leads") == 1
    assert "second stops routing" not in standby.log_since(0).decode()
