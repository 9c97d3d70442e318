"""Routing across routers: a standby router routes calls too, from its copy of the routing
table, and leaves to the leader what its copy cannot route (``--standby-routing``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import nats
import pytest
from nats.aio.msg import Msg

from ipc_client_sdk import IPCClient
from ipc_client_sdk.protocol import CallRequest, Codec, Subjects
from ipc_router.domain import Health, Role
from ipc_router.infrastructure.jetstream_setup import RouterStores, StorageSettings, provision
from ipc_router.infrastructure.kv_follow import FollowedTable
from ipc_router.infrastructure.kv_registry import JetStreamInstanceRepository
from ipc_router.infrastructure.kv_routes import JetStreamRouteRepository
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import RouterProcess, until
from ipc_testing.fakes import make_instance
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

SUBJECTS = Subjects()


async def test_both_routers_route_and_every_call_runs_once(
    nats_server: NatsServerProcess, router: RouterProcess, standby: RouterProcess
) -> None:
    forwarded: Counter[str] = Counter()

    async def seen(msg: Msg) -> None:
        if msg.subject.count(".") == 4:  # an instance's inbox, not its .d or .ctl
            forwarded[Codec().decode_envelope(msg.data, CallRequest).router or ""] += 1

    sniffer = await nats.connect(nats_server.url)
    svc = CountingService()
    try:
        await sniffer.subscribe(f"{SUBJECTS.prefix}.inst.>", cb=seen)
        async with (
            IPCClient(nats_server.url, name="b") as server,
            IPCClient(nats_server.url, name="a") as caller,
        ):
            await server.serve(svc.service, instance_id="b1", concurrency=64)
            placed = datetime.now(UTC)
            requests = [
                WorkRequest(account=f"acc_{i}", amount=Decimal(i), placed_at=placed)
                for i in range(200)
            ]
            results = await asyncio.gather(
                *(
                    caller.call("service_b.do_work", r, returns=WorkResult, durable=True)
                    for r in requests
                )
            )
        await sniffer.flush()
    finally:
        await sniffer.close()
    assert all(r.instance_id == "b1" for r in results)
    assert set(svc.runs.values()) == {1} and len(svc.runs) == 200
    # Both routers took a share (JetStream deals the calls out among their pull requests).
    assert set(forwarded) == {router.router_id, standby.router_id}, forwarded
    assert sum(forwarded.values()) >= 200


@pytest.fixture
async def stores(nats_server: NatsServerProcess) -> AsyncIterator[RouterStores]:
    nc = await nats.connect(nats_server.url)
    try:
        yield await provision(nc.jetstream(), SUBJECTS, StorageSettings())
    finally:
        await nc.close()


async def test_a_followed_table_routes_only_what_the_leader_saved_and_decided(
    stores: RouterStores,
) -> None:
    codec = Codec()
    records = JetStreamInstanceRepository(stores.registry, SUBJECTS.registry_bucket, codec)
    routes = JetStreamRouteRepository(stores.routes, SUBJECTS.routes_bucket, codec)
    active = replace(
        make_instance("svc", "a1", role=Role.ACTIVE, methods=("m",), session="s1"), epoch=4
    )
    await records.put(active)
    await records.put(make_instance("svc", "a2", methods=("m",), session="s2", at=1.0))
    await routes.save_claim("svc", "acc_1", ["a2", "a1"])
    await routes.save_claim("svc", "acc_gone", ["gone", "a1"])
    table = FollowedTable(stores.registry, stores.routes, codec, heartbeat_timeout=1.5)
    assert table.route("svc", "m", None) is None  # nothing read yet
    table.start()
    try:
        await until(lambda: table.route("svc", "m", None) is not None, within=10)
        route = table.route("svc", "m", None)
        assert route is not None
        # The leader's epoch, as saved: the copy never makes one up.
        assert (route.instance_id, route.session, route.epoch) == ("a1", "s1", 4)
        claimed = table.route("svc", "m", "acc_1")
        assert claimed is not None and claimed.instance_id == "a2"
        # A claim whose owner left: the leader picks the heir, the copy routes nothing.
        assert table.route("svc", "m", "acc_gone") is None
        assert table.route("svc", "unknown_method", None) is None
        assert table.route("nobody", "m", None) is None
        # The leader marks the active unhealthy: a failover is the leader's to make.
        await records.put(replace(active, health=Health.UNHEALTHY))
        await until(lambda: table.route("svc", "m", None) is None, within=10)
        await records.delete("svc", "a2")  # acc_1's owner leaves
        await until(lambda: table.route("svc", "m", "acc_1") is None, within=10)
    finally:
        await table.stop()
    assert table.route("svc", "m", "acc_1") is None  # stopped: routes nothing
