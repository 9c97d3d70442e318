"""What a new user runs into first: help, version, completion, fast failures, a call
without its request, and the progress of waiting commands."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from ipc_cli import __version__, _defaults
from ipc_cli.main import app
from ipc_client_sdk import CallContext, EventKind, IPCClient, IPCConnectionError, Service
from ipc_client_sdk._nats import open_nats
from ipc_client_sdk.protocol import CREDENTIAL_ENV_VARS, DEFAULT_PREFIX, DEFAULT_SERVERS
from ipc_testing import NatsServerProcess, RouterProcess, free_port

runner = CliRunner()
IPC = [sys.executable, "-m", "ipc_cli"]


def test_the_help_defaults_are_the_sdks() -> None:
    assert _defaults.DEFAULT_SERVERS == DEFAULT_SERVERS
    assert _defaults.DEFAULT_PREFIX == DEFAULT_PREFIX
    assert _defaults.CREDENTIAL_ENV_VARS == dict(CREDENTIAL_ENV_VARS)
    assert _defaults.EVENT_KINDS == tuple(kind.value for kind in EventKind)


def test_no_arguments_prints_the_help_and_exits_0() -> None:
    done = subprocess.run(IPC, capture_output=True, text=True)
    assert done.returncode == 0 and "Usage: ipc" in done.stdout
    assert "error" not in done.stderr.lower()


def test_version() -> None:
    done = subprocess.run([*IPC, "--version"], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, f"ipc {__version__}")


def test_help_shows_plain_flags_two_distinct_timeouts_and_completion() -> None:
    top = " ".join(runner.invoke(app, ["--help"]).stdout.split())
    call = " ".join(runner.invoke(app, ["call", "--help"]).stdout.split())
    assert "--install-completion" in top
    for text in (top, call):
        assert "<bool>" not in text and "BOOLEAN" not in text
    assert "--direct " in call and "--json " in call
    assert "--call-timeout" in call and "global 'ipc --timeout'" in call
    assert "ipc call --call-timeout" in top


def test_help_loads_neither_the_sdk_nor_rich() -> None:
    code = (
        "import sys\nfrom ipc_cli.main import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('nats', 'pydantic', 'rich', 'msgpack') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


async def test_a_refused_connection_fails_at_once() -> None:
    port = free_port()  # nothing listens there
    try:
        async with asyncio.timeout(5):  # not the 30 s connect timeout
            await open_nats(f"nats://127.0.0.1:{port}", name="t", connect_timeout=30)
    except IPCConnectionError as e:
        assert "nothing listens" in str(e)
    else:
        raise AssertionError("connected to nothing")


async def test_a_silent_server_is_waited_for() -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        port = silent.getsockname()[1]
        with pytest.raises(IPCConnectionError) as error:
            await open_nats(f"nats://127.0.0.1:{port}", name="t", connect_timeout=0.5)
        assert "nothing listens" not in str(error.value)
    finally:
        silent.close()


class Empty(BaseModel):
    pass


class Needs(BaseModel):
    amount: int


async def ping(req: Empty, ctx: CallContext) -> str:
    return "pong"


async def take(req: Needs, ctx: CallContext) -> int:
    return req.amount


@pytest.fixture
async def served(nats_server: NatsServerProcess, router: RouterProcess) -> AsyncIterator[str]:
    svc = Service("tools")
    svc.method("ping")(ping)
    svc.method("take")(take)
    async with IPCClient(nats_server.url, name="tools") as client:
        await client.serve(svc, instance_id="t1")
        yield nats_server.url


async def test_call_without_a_request_needs_a_method_that_takes_none(served: str) -> None:
    def call(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*IPC, "--nats-url", served, "call", *argv], capture_output=True, text=True
        )

    empty = await asyncio.to_thread(call, "tools.ping")
    assert (empty.returncode, json.loads(empty.stdout)) == (0, "pong"), empty.stderr
    missing = await asyncio.to_thread(call, "tools.take")
    assert missing.returncode == 2 and "needs its request" in missing.stderr
    assert (await asyncio.to_thread(call, "tools.take", '{"amount": 3}')).stdout.strip() == "3"


async def test_drain_progress_and_watch_shows_drain_events(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    url = nats_server.url
    release = asyncio.Event()

    async def slow(req: Empty, ctx: CallContext) -> str:
        await release.wait()
        return "done"

    svc = Service("slow")
    svc.method("work")(slow)
    watch = await asyncio.create_subprocess_exec(
        *IPC, "--nats-url", url, "watch", "--kind", "registry", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert watch.stderr is not None and watch.stdout is not None
        assert b"watching" in await watch.stderr.readline()
        async with IPCClient(url, name="slow") as client:
            await client.serve(svc, instance_id="s1")
            await client.serve(svc, instance_id="s2")  # a standby to hand over to
            in_flight = asyncio.create_task(client.call("slow.work", {}, timeout=30))
            drain = await asyncio.create_subprocess_exec(
                *IPC, "--nats-url", url, "drain", "s1", "--wait", "20", "--progress",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert drain.stderr is not None
            line = await drain.stderr.readline()  # the drain waits for the call: it says so
            assert b"draining s1: waiting for its calls in flight to finish" in line, line
            release.set()
            out, err = await drain.communicate()
            assert drain.returncode == 0 and b"is drained" in out, err
            assert await in_flight == "done"
            states = []
            while "draining" not in states:
                event = json.loads(await watch.stdout.readline())
                states.append(event["state"])
    finally:
        watch.terminate()
        await watch.wait()
