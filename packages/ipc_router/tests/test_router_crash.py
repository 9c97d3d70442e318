"""Fault tests: the router process is killed with -9 while calls are in flight."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ipc_client_sdk import CallTimeoutError, IPCClient, RemoteError, Service
from ipc_client_sdk.protocol import ErrorCode
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_router.infrastructure.process import ChildProcess
from ipc_testing import RouterProcess, eventually
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

CALLS = 2000


def work(i: int) -> WorkRequest:
    return WorkRequest(
        account=f"acc_{i % 50}", amount=Decimal(i) / 100, placed_at=datetime.now(UTC)
    )


async def test_router_killed_mid_load_every_accepted_call_gets_one_result_and_one_run(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    svc = CountingService()
    completed = 0
    async with (
        IPCClient(nats_server.url, name="svc_b") as server,
        IPCClient(nats_server.url, name="svc_a") as caller,
    ):
        await server.serve(svc.service, instance_id="b1", concurrency=256)
        gate = asyncio.Semaphore(200)

        async def one(i: int) -> WorkResult:
            nonlocal completed
            request = work(i).model_copy(update={"delay_s": 0.002})
            async with gate:
                result = await caller.call(
                    "service_b.do_work",
                    request,
                    resource_id=request.account,
                    timeout=60,
                    returns=WorkResult,
                )
            completed += 1
            assert result.amount == request.amount
            return result

        calls = [asyncio.create_task(one(i)) for i in range(CALLS)]

        async def some_done() -> None:
            assert completed >= CALLS // 4

        await eventually(some_done, within=60, interval=0.005)
        router.kill()
        assert await router.wait_exit(5)
        killed_at = completed
        restarted_from = router.log_size()
        await router.start()
        results = await asyncio.gather(*calls)
        redelivered = router.log_since(restarted_from).decode().count("delivered again")

    assert killed_at < CALLS, "the kill landed after the load; nothing was tested"
    assert redelivered > 0, "no call was in flight at the kill; nothing was tested"
    assert len(results) == CALLS
    call_ids = [r.call_id for r in results]
    assert len(set(call_ids)) == CALLS
    # Every call ran exactly once, including those the dead router had in flight.
    assert sorted(svc.runs) == sorted(call_ids)
    assert set(svc.runs.values()) == {1}


async def test_a_standby_router_takes_over_when_the_leader_dies(
    nats_server: NatsServerProcess, router: RouterProcess, tmp_path: Path
) -> None:
    svc = CountingService()
    async with (
        RouterProcess(nats_server.url, tmp_path / "second.log", router_id="second") as second,
        IPCClient(nats_server.url, name="svc_b2") as other,
        IPCClient(nats_server.url, name="svc_b") as server,
        IPCClient(nats_server.url, name="svc_a") as caller,
    ):
        # b2 registers first: were acc_1's claim not restored, the new leader would give
        # acc_1 to b2 (least assigned, earliest registered).
        await other.serve(svc.service, instance_id="b2")
        await server.serve(svc.service, instance_id="b1", resources=["acc_1"])
        status = await caller.admin.status()
        assert status.leader is not None
        for i in range(20):  # whichever router answers, the calls are routed by the leader
            await caller.call("service_b.do_work", work(i), resource_id="acc_1", timeout=10)
        router.kill()
        # The lease expires (5 s TTL), "second" takes it, restores the registry, and routes.
        result = await caller.call(
            "service_b.do_work", work(99), resource_id="acc_1", timeout=30, returns=WorkResult
        )
        assert result.instance_id == "b1"
        for i in range(10):
            again = await caller.call(
                "service_b.do_work", work(i), resource_id="acc_1", returns=WorkResult
            )
            assert again.instance_id == "b1"

        # The calls above may all have been routed by "second" as a standby (it routes from
        # its copy of the table): it leads once the dead leader's lease has expired.
        async def leads() -> None:
            assert (await caller.admin.status()).leader is True

        await eventually(leads, within=10)
        assert second.running
    assert set(svc.runs.values()) == {1}


WHOAMI_INSTANCE = """
import asyncio, os, sys
from ipc_client_sdk import IPCClient, Service

svc = Service("whoami")

@svc.method("pid")
async def pid(req: int) -> int:
    return os.getpid()

@svc.method("slow")
async def slow(req: int) -> int:
    print("slow started", flush=True)
    await asyncio.sleep(req)
    return req

async def main() -> None:
    async with IPCClient(sys.argv[1]) as client:
        instance = await client.serve(svc, instance_id="w1")
        print("serving", flush=True)
        while not instance.replaced:
            await asyncio.sleep(0.05)
        print("replaced", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.fixture
async def whoami(
    nats_server: NatsServerProcess, router: RouterProcess, tmp_path: Path
) -> AsyncIterator[ChildProcess]:
    """Instance w1 of service ``whoami`` in a process of its own, serving."""
    script = tmp_path / "whoami.py"
    script.write_text(WHOAMI_INSTANCE)
    proc = ChildProcess(tmp_path / "whoami.log")
    proc.spawn([sys.executable, str(script), nats_server.url])
    try:
        assert await proc.wait_for_output("serving", timeout=20), proc.log_tail()
        yield proc
    finally:
        await proc.stop()


async def test_an_instance_frozen_past_the_timeout_loses_its_id_and_never_serves_again(
    nats_server: NatsServerProcess, whoami: ChildProcess
) -> None:
    frozen = whoami
    frozen.pause()
    svc = Service("whoami")

    @svc.method("pid")
    async def pid(req: int) -> int:
        return os.getpid()

    async with IPCClient(nats_server.url) as client:

        async def take_over() -> None:
            await client.serve(svc, instance_id="w1")

        # Refused while the frozen process still counts as alive, then granted.
        await eventually(take_over, retry_on=(RemoteError,), within=10)
        frozen.resume()
        pids = {await client.call("whoami.pid", i, returns=int) for i in range(20)}
        assert pids == {os.getpid()}
        assert await frozen.wait_for_output("replaced", timeout=10), frozen.log_tail()


async def test_a_caller_learns_at_once_that_its_instance_died_mid_call(
    nats_server: NatsServerProcess, whoami: ChildProcess
) -> None:
    doomed = whoami
    async with IPCClient(nats_server.url) as client:
        call = asyncio.create_task(client.call("whoami.slow", 30, call_id="doomed-1", timeout=60))
        assert await doomed.wait_for_output("slow started", timeout=10)
        doomed.kill()
        started = time.monotonic()
        with pytest.raises(RemoteError) as info:
            await call
        # Heartbeat timeout (1.5 s) and a sweep, not the caller's 60 s.
        assert time.monotonic() - started < 20
        assert info.value.code is ErrorCode.UNKNOWN and not info.value.retryable
        assert "unknown" in info.value.message
        # Its claim stays: a retry on a live instance does not run it blind.
        ran: list[int] = []
        svc = Service("whoami")

        @svc.method("slow")
        async def slow(req: int) -> int:
            ran.append(req)
            return req

        await client.serve(svc, instance_id="w2")
        with pytest.raises(CallTimeoutError) as retry:
            await client.call("whoami.slow", 30, call_id="doomed-1", timeout=2)
        assert "already running on instance w1" in retry.value.message
        assert await client.call("whoami.slow", 1, call_id="fresh-1", returns=int) == 1
        assert ran == [1]


@pytest.mark.slow  # two router processes, several lease renewals
async def test_two_routers_given_the_same_id_never_both_lead(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    logs = [tmp_path / "twin1.log", tmp_path / "twin2.log"]
    async with (
        RouterProcess(nats_server.url, logs[0], router_id="twin"),
        RouterProcess(nats_server.url, logs[1], router_id="twin"),
    ):
        await asyncio.sleep(4)  # several renewal rounds
        texts = [log.read_text() for log in logs]
    assert sum(text.count("twin leads") for text in texts) == 1, texts
    assert not any("lost the lease" in text for text in texts)
