"""Limits on the router's streams and buckets, against a real nats-server: what provisioning
creates, what it updates in place and what it refuses, and what a caller sees when a stream
is full."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from ipc_client_sdk import (
    CallTimeoutError,
    InvalidArgumentError,
    IPCClient,
    StoreFullError,
)
from ipc_client_sdk.protocol import Subjects
from ipc_router.api.config import parse_config
from ipc_router.infrastructure.jetstream_setup import (
    ProvisioningError,
    StorageLimits,
    StorageSettings,
    provision,
)
from ipc_router.infrastructure.sizes import format_size, parse_size
from ipc_testing import NatsServerConfig, NatsServerProcess

SUBJECTS = Subjects()
KiB, MiB = 1024, 1024 * 1024
SMALL = StorageLimits(
    calls_max_bytes=2 * MiB,
    calls_max_msgs=2,
    events_max_bytes=2 * MiB,
    events_max_msgs=3,
    dead_letters_max_bytes=MiB,
    dead_letters_max_msgs=10,
    registry_max_bytes=MiB,
    contracts_max_bytes=MiB,
    routes_max_bytes=MiB,
    leases_max_bytes=64 * KiB,
    results_max_bytes=2 * MiB,
    max_message_size=256 * KiB,
)


@pytest.fixture
async def nc(nats_server: NatsServerProcess) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    try:
        yield conn
    finally:
        await conn.close()


async def config_of(nc: NATS, stream: str) -> StreamConfig:
    return (await nc.jetstream().stream_info(stream)).config


async def test_every_stream_and_bucket_is_capped_with_its_discard_policy(nc: NATS) -> None:
    await provision(nc.jetstream(), SUBJECTS, StorageSettings())
    limits = StorageLimits()
    expected = {
        "IPC_CALLS": (limits.calls_max_bytes, limits.calls_max_msgs, DiscardPolicy.NEW),
        "IPC_EVENTS": (limits.events_max_bytes, limits.events_max_msgs, DiscardPolicy.OLD),
        "IPC_DLQ": (limits.dead_letters_max_bytes, limits.dead_letters_max_msgs, DiscardPolicy.OLD),
        "KV_IPC_REGISTRY": (limits.registry_max_bytes, -1, DiscardPolicy.NEW),
        "KV_IPC_CONTRACTS": (limits.contracts_max_bytes, -1, DiscardPolicy.NEW),
        "KV_IPC_ROUTES": (limits.routes_max_bytes, -1, DiscardPolicy.NEW),
        "KV_IPC_LEASES": (limits.leases_max_bytes, -1, DiscardPolicy.NEW),
        "KV_IPC_RESULTS": (limits.results_max_bytes, -1, DiscardPolicy.NEW),
    }
    for stream, (max_bytes, max_msgs, discard) in expected.items():
        found = await config_of(nc, stream)
        assert (found.max_bytes, found.max_msgs, found.discard) == (max_bytes, max_msgs, discard)
    for stream in ("IPC_CALLS", "IPC_EVENTS", "KV_IPC_RESULTS"):
        assert (await config_of(nc, stream)).max_msg_size == limits.max_message_size
    assert limits.reserved < 8 * 1024 * MiB  # what docs/architecture.md promises


async def test_limits_found_different_are_updated_in_place(
    nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ipc_router.jetstream")
    js = nc.jetstream()
    # As an earlier router made them: no caps, the calls stream discarding old.
    await js.add_stream(
        StreamConfig(
            name="IPC_CALLS",
            subjects=["ipc.call.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=3600,
        )
    )
    await js.add_stream(StreamConfig(name="IPC_EVENTS", subjects=["ipc.pub.>"], max_age=60))
    await js.create_key_value(KeyValueConfig(bucket="IPC_RESULTS", ttl=60))
    await js.create_key_value(KeyValueConfig(bucket="IPC_ROUTES", history=1))
    kept = await js.publish("ipc.pub.t", b"kept")

    await provision(js, SUBJECTS, StorageSettings(limits=SMALL))

    calls = await config_of(nc, "IPC_CALLS")
    assert (calls.max_bytes, calls.max_msgs, calls.discard) == (2 * MiB, 2, DiscardPolicy.NEW)
    assert calls.max_age == 24 * 3600
    events = await config_of(nc, "IPC_EVENTS")
    assert (events.max_bytes, events.max_msgs, events.max_age) == (2 * MiB, 3, 24 * 3600)
    results = await config_of(nc, "KV_IPC_RESULTS")
    assert (results.max_bytes, results.max_msg_size) == (2 * MiB, 256 * KiB)
    assert (await config_of(nc, "KV_IPC_ROUTES")).max_msgs_per_subject == 5
    assert (await js.get_msg("IPC_EVENTS", kept.seq)).data == b"kept"  # nothing purged
    assert "updated stream IPC_CALLS: " in caplog.text
    assert "discard old -> new" in caplog.text


@pytest.mark.parametrize(
    ("stream", "said"),
    [
        (
            StreamConfig(
                name="IPC_CALLS",
                subjects=["ipc.call.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.MEMORY,
            ),
            "stream IPC_CALLS exists with storage memory, not file",
        ),
        (
            StreamConfig(
                name="IPC_EVENTS",
                subjects=["ipc.pub.>"],
                retention=RetentionPolicy.WORK_QUEUE,
            ),
            "stream IPC_EVENTS exists with retention workqueue, not limits",
        ),
        (
            StreamConfig(
                name="KV_IPC_RESULTS",
                subjects=["$KV.IPC_RESULTS.>"],
                storage=StorageType.MEMORY,
                max_msgs_per_subject=1,
            ),
            "bucket IPC_RESULTS exists with storage memory, not file",
        ),
    ],
)
async def test_a_difference_that_breaks_a_guarantee_is_refused_in_one_line(
    nc: NATS, stream: StreamConfig, said: str
) -> None:
    await nc.jetstream().add_stream(stream)
    with pytest.raises(ProvisioningError) as info:
        await provision(nc.jetstream(), SUBJECTS, StorageSettings(limits=SMALL))
    assert said in str(info.value)
    assert "\n" not in str(info.value)


async def test_the_leases_ttl_is_lengthened_but_never_shortened(
    nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket="IPC_LEASES", ttl=2))
    await provision(js, SUBJECTS, StorageSettings(lease_ttl_s=4))
    assert (await config_of(nc, "KV_IPC_LEASES")).max_age == 4

    await provision(js, SUBJECTS, StorageSettings(lease_ttl_s=3))
    assert (await config_of(nc, "KV_IPC_LEASES")).max_age == 4
    assert "bucket IPC_LEASES keeps its TTL of 4s, longer than this router's 3s" in caplog.text


async def test_caps_that_do_not_fit_the_store_are_refused_naming_the_total(
    tmp_path: Path,
) -> None:
    server = NatsServerProcess(
        NatsServerConfig(store_dir=tmp_path / "nats", port=0, max_file_store=16 * MiB)
    )
    try:
        await server.start()
        conn = await nats.connect(server.url)
        try:
            with pytest.raises(ProvisioningError) as info:
                await provision(conn.jetstream(), SUBJECTS, StorageSettings())
        finally:
            await conn.close()
    finally:
        await server.stop()
    said = str(info.value)
    assert said.startswith("JetStream has no room to reserve 1 GiB for stream IPC_CALLS")
    assert f"this router reserves {format_size(StorageLimits().reserved)} in all" in said


async def test_a_full_calls_stream_refuses_a_call_with_store_full(
    nats_server: NatsServerProcess, nc: NATS
) -> None:
    await provision(nc.jetstream(), SUBJECTS, StorageSettings(limits=SMALL))
    # No router takes calls: each stays in the stream, accepted.
    async with IPCClient(nats_server.url, name="svc_a") as client:
        for _ in range(SMALL.calls_max_msgs):
            with pytest.raises(CallTimeoutError):
                await client.call("svc.m", {}, timeout=0.3, durable=True)
        with pytest.raises(StoreFullError) as info:
            await client.call("svc.m", {}, timeout=5, durable=True)
    assert info.value.store == "IPC_CALLS"
    assert info.value.retryable
    assert "IPC_CALLS is full (maximum messages exceeded)" in str(info.value)
    assert (await nc.jetstream().stream_info("IPC_CALLS")).state.messages == 2


async def test_a_full_events_stream_discards_old_and_refuses_oversized_events(
    nats_server: NatsServerProcess, nc: NATS
) -> None:
    await provision(nc.jetstream(), SUBJECTS, StorageSettings(limits=SMALL))
    async with IPCClient(nats_server.url, name="pub", max_payload=MiB) as client:
        seqs = [await client.publish("md.t", {"i": i}) for i in range(5)]
        with pytest.raises(InvalidArgumentError) as info:
            await client.publish("md.t", b"x" * (300 * KiB))
    state = (await nc.jetstream().stream_info("IPC_EVENTS")).state
    assert (state.messages, state.first_seq, state.last_seq) == (3, seqs[2], seqs[4])
    assert "larger than the largest message it stores" in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", MiB), ("512MiB", 512 * MiB), ("2gib", 2048 * MiB), ("1.5K", 1536), ("1GB", 10**9)],
)
def test_sizes_are_read_as_people_write_them(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_limit_flags_and_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPC_EVENTS_MAX_BYTES", "512MiB")
    monkeypatch.setenv("IPC_CALLS_MAX_MSGS", "1000")
    config = parse_config(["--results-max-bytes", "8GiB", "--max-message-size", "2MiB"])
    assert config.limits == StorageLimits(
        events_max_bytes=512 * MiB,
        calls_max_msgs=1000,
        results_max_bytes=8 * 1024 * MiB,
        max_message_size=2 * MiB,
    )
