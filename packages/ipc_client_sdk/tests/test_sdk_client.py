"""``IPCClient`` against a real nats-server: lifecycle, unreachable NATS, no router."""

from __future__ import annotations

import time

import pytest

from ipc_client_sdk import (
    ClientState,
    ClientStateError,
    IPCClient,
    IPCConnectionError,
    RouterUnavailableError,
)
from ipc_client_sdk.protocol import redact_url, servers_label
from ipc_testing import NatsServerProcess, free_port


async def test_lifecycle_opens_once_and_closes_idempotently(
    nats_server: NatsServerProcess,
) -> None:
    client = IPCClient(nats_server.url, name="t")
    seen = [client.state]
    async with client:
        seen.append(client.state)
        assert client.state is ClientState.OPEN
    seen.append(client.state)
    assert seen == [ClientState.UNOPENED, ClientState.OPEN, ClientState.CLOSED]
    await client.close()  # second close: no error
    with pytest.raises(ClientStateError):
        await client.connect()
    with pytest.raises(ClientStateError):
        await client.admin.status()


async def test_unreachable_nats_fails_within_the_connect_timeout() -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    client = IPCClient(url, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(IPCConnectionError) as info:
        await client.connect()
    # nats-py alone would retry for about two minutes; the bound is generous on purpose.
    assert time.monotonic() - started < 5.0
    assert info.value.servers == url
    assert url in str(info.value)


async def test_status_without_a_router_fails_promptly(nats_server: NatsServerProcess) -> None:
    async with IPCClient(nats_server.url) as client:
        started = time.monotonic()
        with pytest.raises(RouterUnavailableError) as info:
            await client.admin.status(timeout=10.0)
        # No responders is immediate: it must not wait for the 10 s timeout.
        assert time.monotonic() - started < 5.0
        assert "no router" in info.value.message


def test_servers_are_validated() -> None:
    with pytest.raises(ValueError):
        IPCClient("")
    with pytest.raises(ValueError):
        IPCClient("nats://127.0.0.1:4222", connect_timeout=0)
    assert IPCClient("nats://a:1, nats://b:2").servers == ["nats://a:1", "nats://b:2"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@10.0.0.5:4222", "nats://***@10.0.0.5:4222"),
        ("nats://token@host:4222", "nats://***@host:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)
def test_credentials_never_appear_in_messages(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert servers_label([url, "nats://b:1"]) == f"{shown},nats://b:1"


async def test_connection_error_hides_credentials() -> None:
    url = f"nats://alice:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(IPCConnectionError) as info:
        await IPCClient(url, connect_timeout=1.0).connect()
    assert "s3cret" not in str(info.value)
