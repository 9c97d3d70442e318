"""Services and the router start in any order: ``serve()`` and ``subscribe(durable=...)``
started first wait for the router, within the bound their caller gives."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from ipc_client_sdk import InvalidArgumentError, IPCClient, RouterUnavailableError
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import RouterProcess, until
from ipc_testing.workload import CountingService

RESULTS = "service_b.b1 is waiting for the results bucket IPC_RESULTS"
EVENTS = "durable 'audit' is waiting for the events stream IPC_EVENTS"


async def nothing(event: object) -> None: ...


def said(caplog: pytest.LogCaptureFixture, words: str) -> bool:
    return any(words in record.getMessage() for record in caplog.records)


@pytest.mark.slow  # a router process of its own
async def test_serve_and_a_durable_subscribe_started_before_the_router_wait_for_it(
    nats_server: NatsServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipc_client_sdk.readiness")
    async with IPCClient(nats_server.url, name="svc_b") as client:
        serving = asyncio.create_task(
            client.serve(CountingService().service, instance_id="b1", ready_timeout=60)
        )
        subscribing = asyncio.create_task(
            client.subscribe("md.x", nothing, durable="audit", ready_timeout=60)
        )
        # Both are waiting, and have said what for.
        await until(lambda: said(caplog, RESULTS) and said(caplog, EVENTS))
        assert not serving.done() and not subscribing.done()
        async with RouterProcess(nats_server.url, tmp_path / "router.log"):
            instance = await asyncio.wait_for(serving, 30)
            sub = await asyncio.wait_for(subscribing, 30)
            assert instance.role == "active"
            assert sub.active


async def test_serve_without_a_router_fails_with_the_clear_error_when_its_bound_runs_out(
    nats_server: NatsServerProcess,
) -> None:
    async with IPCClient(nats_server.url) as client:
        with pytest.raises(RouterUnavailableError, match="IPC_RESULTS does not exist after"):
            await client.serve(CountingService().service, instance_id="b1", ready_timeout=0.3)
        with pytest.raises(InvalidArgumentError, match="ready_timeout"):
            await client.serve(CountingService().service, instance_id="b1", ready_timeout=-1)
        with pytest.raises(InvalidArgumentError, match="ready_timeout"):
            await client.subscribe("md.x", nothing, durable="d", ready_timeout=True)
