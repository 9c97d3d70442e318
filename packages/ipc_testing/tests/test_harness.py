"""The harness itself: real nodes and clusters start, die, come back, and leave nothing behind."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from ipc_client_sdk import ClientState, IPCClient, IPCConnectionError
from ipc_testing import (
    NatsCluster,
    NatsServerConfig,
    NatsServerError,
    NatsServerProcess,
    eventually,
    pid_alive,
)


async def test_single_node_start_kill_restart(tmp_path: Path) -> None:
    server = NatsServerProcess(NatsServerConfig(store_dir=tmp_path / "n", port=0))
    await server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
        await js.publish("keep.a", b"1")
        await nc.close()

        pid = server.pid
        assert pid is not None
        server.kill()
        assert not pid_alive(pid)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.config.port)

        await server.start()  # same port, same store
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1  # file storage survived the crash
        await nc.close()
    finally:
        await server.stop()
    assert not server.running


async def test_pause_and_resume(tmp_path: Path) -> None:
    server = NatsServerProcess(NatsServerConfig(store_dir=tmp_path / "n", port=0))
    await server.start()
    try:
        server.pause()
        # A frozen server accepts TCP (the kernel does) but never says hello.
        with pytest.raises(IPCConnectionError):
            await IPCClient(server.url, connect_timeout=1.0).connect()
        server.resume()
        async with IPCClient(server.url, connect_timeout=5.0) as client:
            assert client.state is ClientState.OPEN
    finally:
        await server.stop()


async def test_stop_reaps_a_paused_process(tmp_path: Path) -> None:
    server = NatsServerProcess(NatsServerConfig(store_dir=tmp_path / "n", port=0))
    await server.start()
    pid = server.pid
    assert pid is not None
    server.pause()
    await server.stop()
    assert not pid_alive(pid)


async def test_failed_start_says_why(tmp_path: Path) -> None:
    first = NatsServerProcess(NatsServerConfig(store_dir=tmp_path / "a", port=0))
    await first.start()
    try:
        clash = NatsServerProcess(
            NatsServerConfig(store_dir=tmp_path / "b", port=first.config.port)
        )
        with pytest.raises(NatsServerError) as info:
            await clash.start(timeout=10)
        assert "exited during start" in str(info.value)
        await clash.stop()
    finally:
        await first.stop()


async def test_cluster_replicates_and_survives_a_node_kill(nats_cluster: NatsCluster) -> None:
    assert len(nats_cluster.nodes) == 3
    nc = await nats.connect(nats_cluster.urls)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3))
        for i in range(10):
            # Msg-Id makes a retried publish (leader still being elected) land once.
            msg_id = str(i)
            await eventually(
                partial(js.publish, "r3.x", msg_id.encode(), headers={"Nats-Msg-Id": msg_id})
            )

        victim = nats_cluster.nodes[0]
        pid = victim.pid
        assert pid is not None
        victim.kill()
        assert not pid_alive(pid)

        # Two of three nodes keep a quorum: writes still succeed (after a leader move).
        await eventually(
            lambda: js.publish("r3.x", b"after", timeout=2, headers={"Nats-Msg-Id": "after"})
        )

        await victim.start()
        info = await eventually(lambda: js.stream_info("R3"))
        assert info.state.messages == 11
        assert info.cluster is not None and info.cluster.name == "ipc-test"
    finally:
        await nc.close()


@pytest.mark.slow  # a 3-node cluster
async def test_cluster_teardown_leaves_no_process(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "c", size=3)
    async with cluster:
        pids = [n.pid for n in cluster.nodes]
        assert all(p is not None and pid_alive(p) for p in pids)
    assert not any(p is not None and pid_alive(p) for p in pids)
