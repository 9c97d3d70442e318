"""``ipc-router`` with no NATS URL: it runs the bundled nats-server, and stops it on exit."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import nats
import pytest

from ipc_client_sdk import IPCClient
from ipc_client_sdk.protocol import Codec, Subjects
from ipc_router.domain import Role
from ipc_router.infrastructure.kv_registry import JetStreamInstanceRepository
from ipc_testing import ChildProcess, NatsServerConfig, NatsServerProcess, free_port, pid_alive
from ipc_testing.fakes import make_instance

pytestmark = pytest.mark.slow  # every test starts router processes


def embedded_router(
    tmp_path: Path, port: int, router_id: str = "emb", log_name: str = "router.log"
) -> ChildProcess:
    """``ipc-router`` with no NATS URL, its embedded server on ``port``."""

    argv = [
        sys.executable,
        "-m",
        "ipc_router",
        "--router-id",
        router_id,
        "--embedded-port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "IPC_NATS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = ChildProcess(tmp_path / log_name)
    proc.spawn(argv, env=env)
    return proc


async def wait_for_log(proc: ChildProcess, text: str, *, since: int = 0) -> str:
    """The log after ``since`` once it holds ``text``; fails if the router exits first."""
    assert await proc.wait_for_output(text, since=since, timeout=20), proc.log_tail(5)
    return proc.log_since(since).decode()


def embedded_pid(data_dir: Path) -> int:
    """The embedded server's pid, read from the process table by its config path."""
    conf = str(data_dir.resolve() / "nats" / "nats-server.conf")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if conf.encode() in cmdline:
            return int(entry.name)
    raise AssertionError("embedded nats-server process not found")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_embedded_nats_serves_status_and_stops_with_the_router(
    tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    proc = embedded_router(tmp_path, port)
    try:
        log = await wait_for_log(proc, "router emb ready")
        assert "started embedded nats-server" in log
        assert str((tmp_path / "data").resolve()) in log  # it says where the data is
        open_door = [line for line in log.splitlines() if "WITHOUT AUTHENTICATION" in line]
        assert len(open_door) == 1 and " WARNING " in open_door[0], log
        assert "listens on 127.0.0.1 only" in open_door[0] and "ipc auth init" in open_door[0]
        nats_pid = embedded_pid(tmp_path / "data")

        async with IPCClient(f"nats://127.0.0.1:{port}") as client:
            status = await client.admin.status()
        assert status.nats.embedded is True
        assert status.nats.jetstream is True
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()

        proc.signal(sig)
        assert await proc.wait_exit(20)
        assert proc.returncode == 0
        assert not pid_alive(nats_pid), "embedded nats-server outlived the router"
        assert "Traceback" not in proc.log_path.read_text()
    finally:
        await proc.stop()


async def test_embedded_state_survives_a_router_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = embedded_router(tmp_path, port, router_id="first")
    try:
        await wait_for_log(proc, "router first ready")
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(Subjects().registry_bucket)
            record = make_instance("service_b", "b1", role=Role.ACTIVE, at=time.time())
            await JetStreamInstanceRepository(kv, Subjects().registry_bucket, Codec()).put(record)
        finally:
            await nc.close()
    finally:
        assert await proc.stop() == 0

    offset = proc.log_size()
    proc = embedded_router(tmp_path, port, router_id="second")
    try:
        log = await wait_for_log(proc, "router second ready", since=offset)
        async with IPCClient(url) as client:
            status = await client.admin.status()
        assert (status.router_id, status.instances) == ("second", 1)
        assert "created stream" not in log and "created KV bucket" not in log
    finally:
        assert await proc.stop() == 0


async def test_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    occupant = NatsServerProcess(NatsServerConfig(store_dir=tmp_path / "other", port=0))
    await occupant.start()
    try:
        proc = embedded_router(tmp_path, occupant.config.port)
        assert await proc.wait_exit(30)
        assert proc.returncode == 1
        log = proc.log_path.read_text()
        assert "--nats-url" in log and "Traceback" not in log
    finally:
        await occupant.stop()


async def test_a_second_embedded_router_on_the_same_data_folder_is_refused(
    tmp_path: Path,
) -> None:
    port = free_port()
    first = embedded_router(tmp_path, port, router_id="first")
    try:
        await wait_for_log(first, "router first ready")
        second = embedded_router(tmp_path, free_port(), router_id="second", log_name="r2.log")
        try:
            assert await second.wait_exit(20)
            assert second.returncode == 1
            assert "in use by another router" in second.log_tail(5)
        finally:
            await second.stop()
        async with IPCClient(f"nats://127.0.0.1:{port}") as client:
            assert (await client.admin.status()).router_id == "first"
    finally:
        assert await first.stop() == 0
