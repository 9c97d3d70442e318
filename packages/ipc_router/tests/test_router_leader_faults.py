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
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from ipc_client_sdk import CodecError, IPCClient, IPCError
from ipc_client_sdk.protocol import ROUTER_HEADER, CallRequest, Codec, Subjects
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


@pytest.fixture
async def standby(
    nats_server: NatsServerProcess, router: RouterProcess, tmp_path: Path
) -> AsyncIterator[RouterProcess]:
    """A second router started after ``router`` (which leads): it waits as standby."""
    second = RouterProcess(nats_server.url, tmp_path / "second.log", router_id="second")
    try:
        await second.start()
        assert "second waits as standby" in second.log_since(0).decode()
        yield second
    finally:
        router.resume()  # a test may have frozen it
        await second.stop()


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
        router = (msg.headers or {}).get(ROUTER_HEADER, "")
        self.by_router.setdefault(router, []).append(request.call_id)


async def test_a_frozen_leader_is_replaced_and_when_it_wakes_steps_down_without_routing(
    nats_server: NatsServerProcess, router: RouterProcess, standby: RouterProcess
) -> None:
    svc = CountingService()
    deliveries = Deliveries()
    sniffer = await nats.connect(nats_server.url)
    try:
        await sniffer.subscribe(f"{Subjects().prefix}.inst.>", cb=deliveries.seen)
        async with _loaded(nats_server.url, svc) as (_, load):
            await until(lambda: len(load.answered) >= 50, within=30)
            await sniffer.flush()
            assert len(deliveries.by_router) == 1  # only the leader routes
            (first_router,) = deliveries.by_router
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
    # The frozen leader routed nothing that reached it after it froze: those calls went to
    # the new leader (calls it had taken before may still have left its socket on waking).
    sent_after_pause = {call_id for call_id, at in load.sent.items() if at > paused}
    assert not sent_after_pause & set(deliveries.by_router[first_router])
    assert len(deliveries.by_router) == 2
    # Each router led once: the frozen one did not take the lease back.
    assert router.log_since(0).decode().count("test-router leads") == 1
    assert standby.log_since(0).decode().count("second leads") == 1
    assert "second stops routing" not in standby.log_since(0).decode()
