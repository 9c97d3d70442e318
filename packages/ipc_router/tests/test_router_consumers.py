"""One-off reads leave no JetStream consumer behind: a status, a scan of the registry."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from ipc_client_sdk import IPCClient
from ipc_client_sdk.protocol import Codec, watch_bucket
from ipc_router.infrastructure.kv_registry import JetStreamInstanceRepository
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import RouterProcess, eventually
from ipc_testing.fakes import make_instance
from ipc_testing.workload import CountingService, WorkRequest

STATUS_REQUESTS = 300


def sample() -> WorkRequest:
    return WorkRequest(account="acc_1", amount=Decimal("1.5"), placed_at=datetime.now(UTC))


async def consumers(nc: NATS) -> int:
    """The consumers the server holds in the account, all streams together."""
    return (await nc.jetstream().account_info()).consumers


async def status_soak(client: IPCClient, count: int) -> None:
    """``count`` status requests, a few at a time (as several monitors polling would)."""
    for _ in range(count // 10):
        await asyncio.gather(*(client.admin.status() for _ in range(10)))


async def test_scans_of_the_registry_leave_no_consumer(nats_server: NatsServerProcess) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="SCANNED")
        repo = JetStreamInstanceRepository(kv, "SCANNED", Codec())
        for i in range(5):
            await repo.put(make_instance("service_b", f"b{i}", at=time.time()))
        before = await consumers(nc)
        for _ in range(50):
            assert len(await repo.list_instances()) == 5
        assert await consumers(nc) == before
    finally:
        await nc.close()


async def test_status_requests_leave_the_consumer_count_flat(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        async with IPCClient(nats_server.url) as client:
            # Registered instances: a status reads them (an empty registry needs no watch).
            await client.serve(CountingService().service, instance_id="b1")
            assert (await client.admin.status()).instances == 1
            before = await consumers(nc)
            await status_soak(client, STATUS_REQUESTS)
            # Deleted before each answer, not left to expire.
            assert await consumers(nc) == before
    finally:
        await nc.close()


async def test_a_standby_router_takes_the_lease_after_a_status_soak(
    nats_server: NatsServerProcess, router: RouterProcess, tmp_path: Path
) -> None:
    svc = CountingService()
    async with (
        RouterProcess(nats_server.url, tmp_path / "second.log", router_id="second"),
        IPCClient(nats_server.url, name="svc_b") as server,
        IPCClient(nats_server.url, name="svc_a") as caller,
    ):
        await server.serve(svc.service, instance_id="b1")
        await status_soak(caller, STATUS_REQUESTS)
        router.kill()

        async def second_leads() -> None:
            status = await caller.admin.status(timeout=2)
            assert (status.router_id, status.leader) == ("second", True)

        await eventually(second_leads, within=30)
        await caller.call(
            "service_b.do_work",
            sample(),
            timeout=10,
        )
    assert set(svc.runs.values()) == {1}


@pytest.mark.slow  # waits for the server's inactive threshold
async def test_an_abandoned_watch_consumer_expires_within_seconds(
    nats_server: NatsServerProcess,
) -> None:
    watcher_nc = await nats.connect(nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket="WATCHED")
        await kv.put("a", b"1")
        before = await consumers(nc)
        entries = watch_bucket(await watcher_nc.jetstream().key_value("WATCHED"))
        assert (await anext(entries)) is not None  # the watch runs: its consumer exists
        assert await consumers(nc) == before + 1
        await watcher_nc.close()  # the process "dies": nobody deletes the consumer

        async def expired() -> None:
            assert await consumers(nc) == before

        await eventually(expired, within=15)
    finally:
        await nc.close()


async def test_the_routing_cache_deletes_its_watches_when_the_client_closes(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        async with IPCClient(nats_server.url, name="svc_b") as server:
            await server.serve(CountingService().service, instance_id="b1")
            before = await consumers(nc)
            async with IPCClient(nats_server.url, name="svc_a") as caller:
                await caller.call("service_b.do_work", sample(), timeout=10)  # starts the cache
                assert await consumers(nc) == before + 2  # the registry and the routes
            assert await consumers(nc) == before
    finally:
        await nc.close()
