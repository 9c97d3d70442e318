"""Pytest fixtures with real processes, registered through the ``pytest11`` entry point.

- ``no_credential_variables``: the credential variables unset for the test.
- ``nats_server``: one nats-server with JetStream on a free loopback port.
- ``nats_cluster``: a 3-node JetStream cluster.
- ``router``: an ``ipc-router`` process connected to ``nats_server``.
- ``clients``: a caller (``svc_a``) and a server (``svc_b``) ``IPCClient``, connected, with
  ``router`` running.
- ``instance_pair``: ``service_b`` instances b1 (active, owns acc_1) and b2 (standby for
  acc_1), each in a process of its own, registered with ``router``.

Every fixture stops its processes in ``finally``, so a failing test leaves none behind.

A test that uses a fixture of ``PROCESS_FIXTURES`` (directly or through another fixture) is
marked ``slow``: ``pytest -m "not slow"`` is the fast lane. Tests that start processes
themselves, or wait on the system's timers, carry the mark explicitly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings

from ipc_client_sdk import IPCClient
from ipc_client_sdk.protocol import CREDENTIAL_ENV_VARS
from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess
from ipc_testing.cluster import NatsCluster
from ipc_testing.instance import InstanceProcess
from ipc_testing.router import RouterProcess

# Per-example deadlines turn a busy 2-core CI machine into "Flaky" failures; the suite
# checks behaviour, benchmarks/ checks speed.
settings.register_profile("ipc", deadline=None)
settings.load_profile("ipc")

PROCESS_FIXTURES = frozenset(
    {"nats_cluster", "router", "instance_pair", "ipc_stack", "ipc_stack_session"}
)
"""Fixtures that start processes beyond one nats-server: a test using one is ``slow``."""


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test whose fixtures (their closure) start extra processes."""
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def no_credential_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every ``IPC_NATS_*``/``IPC_TLS_*`` credential variable for the test, so that
    clients and routers it builds get exactly the credentials it gives them."""
    for var in CREDENTIAL_ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServerProcess]:
    """A single JetStream-enabled nats-server on a free loopback port."""
    server = NatsServerProcess(NatsServerConfig(store_dir=tmp_path / "nats", port=0))
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """A 3-node JetStream cluster on free loopback ports."""
    cluster = NatsCluster(tmp_path / "cluster", size=3)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def router(nats_server: NatsServerProcess, tmp_path: Path) -> AsyncIterator[RouterProcess]:
    """An ``ipc-router`` process against ``nats_server``, ready to answer."""
    proc = RouterProcess(nats_server.url, tmp_path / "router.log")
    try:
        await proc.start()
        yield proc
    finally:
        await proc.stop()


@pytest.fixture
async def standby(
    nats_server: NatsServerProcess, router: RouterProcess, tmp_path: Path
) -> AsyncIterator[RouterProcess]:
    """A second router, ``second``, started after ``router`` (which leads): a standby (which
    routes calls too, with standby routing on)."""
    second = RouterProcess(nats_server.url, tmp_path / "second.log", router_id="second")
    try:
        await second.start()
        assert "second waits as standby" in second.log_since(0).decode()
        yield second
    finally:
        router.resume()  # a test may have frozen it
        await second.stop()


@pytest.fixture
async def clients(
    nats_server: NatsServerProcess, router: RouterProcess
) -> AsyncIterator[tuple[IPCClient, IPCClient]]:
    """A caller and a server, both connected; the router is running."""
    async with (
        IPCClient(nats_server.url, name="svc_a") as caller,
        IPCClient(nats_server.url, name="svc_b") as server,
    ):
        yield caller, server


@pytest.fixture
async def instance_pair(
    nats_server: NatsServerProcess, router: RouterProcess, tmp_path: Path
) -> AsyncIterator[tuple[InstanceProcess, InstanceProcess]]:
    """b1 (active, owns acc_1) and b2 (standby for acc_1), each in its own process."""
    b1 = InstanceProcess(nats_server.url, "b1", tmp_path, resources=("acc_1",))
    b2 = InstanceProcess(nats_server.url, "b2", tmp_path, resources=("acc_1",))
    try:
        await b1.start()
        await b2.start()
        assert await b1.wait_for_output("serving as active", timeout=1), b1.log_tail()
        assert await b2.wait_for_output("serving as standby", timeout=1), b2.log_tail()
        yield b1, b2
    finally:
        for proc in (b1, b2):
            proc.resume()  # a test may have frozen it
            await proc.stop()
