"""One tenant of the JetStream store does not starve another: a router with small caps on a
nats-server with a small ``max_file_store``, its events stream filled with large events,
keeps taking calls and renewing its lease; a full results bucket refuses calls unrun."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from pydantic import BaseModel

from ipc_client_sdk import CallContext, IPCClient, Service, StoreFullError
from ipc_testing import NatsServerConfig, NatsServerProcess, RouterProcess, eventually
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

pytestmark = pytest.mark.slow  # starts its own nats-server and router processes

MiB = 1024 * 1024
STORE = 48 * MiB  # the store a client once filled with 48 events of 1 MiB
SMALL_CAPS = (
    "--calls-max-bytes=4MiB",
    "--events-max-bytes=8MiB",
    "--dead-letters-max-bytes=1MiB",
    "--registry-max-bytes=1MiB",
    "--routes-max-bytes=1MiB",
    "--leases-max-bytes=64KiB",
    "--results-max-bytes=4MiB",
    "--contracts-max-bytes=256KiB",
)


@pytest.fixture
async def small_store(tmp_path: Path) -> AsyncIterator[NatsServerProcess]:
    server = NatsServerProcess(
        NatsServerConfig(store_dir=tmp_path / "nats", port=0, max_file_store=STORE)
    )
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def started_router(server: NatsServerProcess, log: Path, *args: str) -> RouterProcess:
    router = RouterProcess(server.url, log, args=args)
    await router.start()
    return router


async def lease_revision(server: NatsServerProcess) -> int:
    nc = await nats.connect(server.url)
    try:
        entry = await (await nc.jetstream().key_value("IPC_LEASES")).get("router-leader")
        assert entry.revision is not None
        return entry.revision
    finally:
        await nc.close()


async def stored_bytes(server: NatsServerProcess) -> int:
    nc = await nats.connect(server.url)
    try:
        return (await nc.jetstream().account_info()).storage
    finally:
        await nc.close()


def work(account: str) -> WorkRequest:
    return WorkRequest(account=account, amount=Decimal("1.5"), placed_at=datetime.now(UTC))


async def test_a_full_events_stream_starves_neither_calls_nor_the_lease(
    small_store: NatsServerProcess, tmp_path: Path
) -> None:
    router = await started_router(small_store, tmp_path / "router.log", *SMALL_CAPS)
    try:
        async with (
            IPCClient(small_store.url, name="svc_a") as caller,
            IPCClient(small_store.url, name="svc_b") as server,
        ):
            svc = CountingService()
            await server.serve(svc.service, instance_id="b1")
            big = os.urandom(1000 * 1024)
            for _ in range(STORE // MiB + 8):  # more than the whole store, in 1 MiB events
                await caller.publish("md.flood", big)

            assert await stored_bytes(small_store) <= 20 * MiB  # the caps, not the store
            result = await caller.call(
                "service_b.do_work", work("acc_1"), durable=True, returns=WorkResult
            )
            assert result.account == "acc_1"
            assert sum(svc.runs.values()) == 1
            assert await caller.publish("md.flood", big) > 0  # the oldest events make room
            # The leader goes on renewing its lease after the flood.
            flooded = await lease_revision(small_store)
            await eventually(lambda: _advanced(small_store, flooded))
        assert "lost the lease" not in router.log_path.read_text()
    finally:
        await router.stop()


async def _advanced(server: NatsServerProcess, revision: int) -> None:
    assert await lease_revision(server) > revision


class Padded(BaseModel):
    pad: str


async def test_a_full_results_bucket_refuses_calls_unrun(
    small_store: NatsServerProcess, tmp_path: Path
) -> None:
    router = await started_router(
        small_store,
        tmp_path / "router.log",
        *SMALL_CAPS,
        "--results-max-bytes=64KiB",
        "--max-message-size=64KiB",
    )
    runs: Counter[str] = Counter()
    svc = Service("padded")

    @svc.method("echo")
    async def echo(req: Padded, ctx: CallContext) -> Padded:
        runs[ctx.call_id] += 1
        return req

    try:
        async with IPCClient(small_store.url, name="caller") as client:
            await client.serve(svc, instance_id="p1")
            refused: StoreFullError | None = None
            answered: list[str] = []
            for i in range(64):  # 4 KiB results: the bucket is full well before that
                call_id = f"call-{i}"
                try:
                    await client.call(
                        "padded.echo", Padded(pad="x" * 4096), call_id=call_id, returns=Padded
                    )
                except StoreFullError as e:
                    refused = e
                    break
                answered.append(call_id)
        assert refused is not None, "the results bucket never filled"
        assert refused.store == "IPC_RESULTS"
        assert refused.call_id == call_id and runs[call_id] == 0  # refused, not run
        assert all(runs[a] == 1 for a in answered) and len(answered) >= 8
    finally:
        await router.stop()
