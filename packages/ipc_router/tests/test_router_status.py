"""The router process against a real nats-server: provisioning and the admin status."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest

from ipc_client_sdk import IPCClient, RemoteError
from ipc_client_sdk.protocol import AdminReply, Codec, ErrorCode, Subjects
from ipc_router.domain import InstanceRecord
from ipc_router.infrastructure.kv_registry import JetStreamInstanceRepository
from ipc_testing import NatsCluster, NatsServerProcess, RouterProcess, eventually
from ipc_testing.fakes import make_instance


def instance(service: str, instance_id: str) -> InstanceRecord:
    return make_instance(service, instance_id, at=time.time(), resources=("acc_XYZ",))


async def test_status_names_router_and_nats_server(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    async with IPCClient(nats_server.url) as client:
        status = await client.admin.status()
    assert status.router_id == "test-router"
    assert status.version == "0.1.0"
    assert status.protocol_version == 1
    assert status.subject_prefix == "ipc"
    assert status.nats.version == nats_server.version().lstrip("v")
    assert status.nats.jetstream is True
    assert status.nats.embedded is False
    assert status.nats.connected_url == nats_server.url
    assert (status.services, status.instances) == (0, 0)
    assert 0 <= status.uptime_s < 60
    assert status.started_at <= datetime.now(UTC)


async def test_provisioning_creates_streams_and_buckets_and_keeps_them(
    nats_server: NatsServerProcess, router: RouterProcess, tmp_path: Path
) -> None:
    subjects = Subjects()
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        stream = await js.stream_info(subjects.calls_stream)
        assert stream.config.subjects == [subjects.calls_all]
        registry = await js.key_value(subjects.registry_bucket)
        for bucket in (subjects.routes_bucket, subjects.leases_bucket, subjects.results_bucket):
            await js.key_value(bucket)
        repo = JetStreamInstanceRepository(registry, subjects.registry_bucket, Codec())
        for service, inst in [("service_b", "b1"), ("service_b", "b2"), ("service_c", "c1")]:
            await repo.put(instance(service, inst))

        # A second router on the same NATS, and a restart of the first: neither fails,
        # neither wipes what is there.
        async with RouterProcess(nats_server.url, tmp_path / "r2.log", router_id="second"):
            await router.stop()
            await router.start()
            async with IPCClient(nats_server.url) as client:
                status = await client.admin.status()
            assert (status.services, status.instances) == (2, 3)

        assert (await js.stream_info(subjects.calls_stream)).config.subjects == [subjects.calls_all]
        assert len(await repo.list_instances()) == 3
    finally:
        await nc.close()


async def test_unreadable_registry_entry_does_not_blind_status(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        kv = await nc.jetstream().key_value(Subjects().registry_bucket)
        await JetStreamInstanceRepository(kv, Subjects().registry_bucket, Codec()).put(
            instance("service_b", "b1")
        )
        await kv.put("garbage.entry", b"\xc1\xc1")
        async with IPCClient(nats_server.url) as client:
            status = await client.admin.status()
        assert status.instances == 1
    finally:
        await nc.close()


async def test_unknown_admin_operation_is_not_found(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    async with IPCClient(nats_server.url) as client:
        with pytest.raises(RemoteError) as info:
            await client.admin.request("explode")
        assert info.value.code is ErrorCode.NOT_FOUND
        assert "status" in info.value.message  # it lists what exists
        assert (await client.admin.status()).router_id == "test-router"


@pytest.mark.parametrize(
    "payload",
    [b"\xc1", b"", Codec().encode({"v": 99, "op": "status"}), Codec().encode({"v": 1})],
)
async def test_bad_admin_request_gets_an_error_and_the_router_keeps_serving(
    nats_server: NatsServerProcess, router: RouterProcess, payload: bytes
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        msg = await nc.request("ipc.admin.status", payload, timeout=5)
        reply = Codec().decode_envelope(msg.data, AdminReply)
        assert reply.ok is False and reply.error is not None
        assert reply.error.code is ErrorCode.INVALID_ARGUMENT
    finally:
        await nc.close()
    async with IPCClient(nats_server.url) as client:
        assert (await client.admin.status()).router_id == "test-router"


@pytest.mark.slow  # a router process of its own
async def test_custom_prefix_isolates_deployments(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    async with RouterProcess(
        nats_server.url, tmp_path / "desk.log", router_id="desk", args=("--prefix", "desk1.ipc")
    ):
        async with IPCClient(nats_server.url, prefix="desk1.ipc") as client:
            assert (await client.admin.status()).subject_prefix == "desk1.ipc"
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().stream_info("DESK1_IPC_CALLS")
        finally:
            await nc.close()


async def test_router_on_a_three_node_cluster_with_replicas(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    async with RouterProcess(
        nats_cluster.url, tmp_path / "r.log", router_id="clustered", args=("--replicas", "3")
    ):
        async with IPCClient(nats_cluster.urls) as client:
            status = await client.admin.status()
        assert status.nats.cluster == "ipc-test"
        nc = await nats.connect(nats_cluster.urls)
        try:
            info = await nc.jetstream().stream_info(Subjects().calls_stream)
            assert info.config.num_replicas == 3
        finally:
            await nc.close()


@pytest.mark.slow  # a router process of its own
async def test_router_exits_3_when_nats_is_unreachable(tmp_path: Path) -> None:
    proc = RouterProcess("nats://127.0.0.1:1", tmp_path / "r.log", args=("--connect-timeout", "1"))
    proc.spawn(proc.command())
    assert await proc.wait_exit(20)
    assert proc.returncode == 3
    log = proc.log_path.read_text()
    assert "cannot reach NATS" in log and "Traceback" not in log


async def test_router_rides_out_a_nats_restart(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    nats_server.kill()
    await nats_server.start()  # same port and store

    async def status_answers() -> str:
        async with IPCClient(nats_server.url) as client:
            return (await client.admin.status(timeout=2)).router_id

    # The router reconnects (1 s apart) and nats-py re-subscribes the admin subjects.
    assert await eventually(status_answers, within=20) == "test-router"
    assert router.running


@pytest.mark.slow  # a router process of its own
@pytest.mark.parametrize(
    ("name", "subjects", "said"),
    [
        # Another deployment (or a hand-made stream) holds the router's stream name.
        ("IPC_CALLS", ["elsewhere.>"], "another deployment"),
        # A stream of another name already captures the router's subjects.
        ("GREEDY", ["ipc.>"], "cannot create stream IPC_CALLS"),
    ],
)
async def test_conflicting_stream_is_one_clear_error(
    nats_server: NatsServerProcess, tmp_path: Path, name: str, subjects: list[str], said: str
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name=name, subjects=subjects)
    finally:
        await nc.close()
    proc = RouterProcess(nats_server.url, tmp_path / "r.log")
    proc.spawn(proc.command())
    assert await proc.wait_exit(30)
    assert proc.returncode == 1
    log = proc.log_path.read_text()
    assert said in log and "Traceback" not in log
