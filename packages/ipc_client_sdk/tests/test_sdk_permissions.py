"""Permission violations: an identity that NATS does not permit an operation gets
``PermissionDeniedError`` from that operation at once, and keeps doing what it may."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from ipc_client_sdk import (
    CallContext,
    Credentials,
    ErrorCode,
    IPCClient,
    IPCError,
    PermissionDeniedError,
    Service,
)
from ipc_client_sdk._permissions import Permissions, parse_violation, subject_matches
from ipc_router.api.app import Router
from ipc_router.api.config import RouterConfig
from ipc_testing import NatsServerConfig, NatsServerProcess, until
from ipc_testing.auth import NKeyUser, new_nkey_user

pytestmark = pytest.mark.usefixtures("no_credential_variables")

PROMPTLY = 10.0
"""Seconds a refusal may take at most; every refused operation is given a far longer
timeout (``LONG``), so passing means it did not wait for it."""

LONG = 60.0


class Echo(BaseModel):
    text: str


def limited_permissions() -> str:
    """May call and serve ``allowed`` only, publish and subscribe ``ok.>`` only, and of the
    admin operations only ask for the status."""
    publish = [
        "ipc.call.allowed.>",
        "ipc.inst.allowed.>",
        "ipc.ctl.>",
        "ipc.hb.>",
        "ipc.pub.ok.>",
        "ipc.admin.status",
        "_INBOX.>",
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.>",
        "$JS.API.CONSUMER.>",
        "$JS.API.DIRECT.GET.>",
        "$JS.ACK.>",
        "$KV.IPC_RESULTS.>",
    ]
    deny = ["$JS.API.CONSUMER.*.IPC_EVENTS.>", "$JS.API.CONSUMER.*.*.IPC_EVENTS.>"]
    subscribe = ["_INBOX.>", "ipc.pub.ok.>", "ipc.inst.allowed.>"]

    def quoted(subjects: list[str]) -> str:
        return ", ".join(f'"{s}"' for s in subjects)

    return (
        f"publish: {{ allow: [{quoted(publish)}], deny: [{quoted(deny)}] }}, "
        f"subscribe: {{ allow: [{quoted(subscribe)}] }}"
    )


@dataclass
class Deployment:
    server: NatsServerProcess
    router_key: NKeyUser
    limited: Credentials


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    """A nats-server admitting a router (every permission) and a limited service identity,
    with a router running and an instance of ``allowed`` served by the router's identity."""
    keys = tmp_path / "keys"
    router_key, limited = new_nkey_user(keys, "router"), new_nkey_user(keys, "limited")
    block = (
        f'authorization {{ users: [ {{ nkey: "{router_key.public_key}" }}, '
        f'{{ nkey: "{limited.public_key}", permissions: {{ {limited_permissions()} }} }} ] }}\n'
    )
    server = NatsServerProcess(NatsServerConfig(store_dir=tmp_path / "nats", port=0, extra=block))
    await server.start()
    root = Credentials(nkey_seed_file=router_key.seed_file)
    config = RouterConfig(nats_url=server.url, data_dir=tmp_path / "data", credentials=root)
    svc = Service("allowed")

    @svc.method("echo")
    async def echo(req: Echo, ctx: CallContext) -> Echo:
        return req

    try:
        async with Router(config), IPCClient(server.url, name="owner", credentials=root) as owner:
            instance = await owner.serve(svc, instance_id="a1")
            try:
                yield Deployment(server, router_key, Credentials(nkey_seed_file=limited.seed_file))
            finally:
                await instance.stop()
    finally:
        await server.stop()


async def refused(operation: Awaitable[object]) -> PermissionDeniedError:
    """The PermissionDeniedError ``operation`` raises within ``PROMPTLY`` seconds."""
    with pytest.raises(PermissionDeniedError) as caught:
        async with asyncio.timeout(PROMPTLY):
            await operation
    error = caught.value
    assert isinstance(error, IPCError) and error.code is ErrorCode.PERMISSION_DENIED
    assert not error.retryable
    return error


async def test_calls_publishes_and_requests_that_nats_refuses_fail_at_once(
    deployment: Deployment,
) -> None:
    async with IPCClient(
        deployment.server.url, name="limited", credentials=deployment.limited
    ) as client:
        error = await refused(client.call("secret.read", Echo(text="x"), timeout=LONG))
        assert (error.operation, error.subject) == ("publish", "ipc.call.secret.read.limited")
        assert error.service == "secret" and error.call_id
        answer = await client.call("allowed.echo", Echo(text="hi"), returns=Echo, timeout=LONG)
        assert answer == Echo(text="hi")

        error = await refused(client.publish("md.ticks", Echo(text="x"), timeout=LONG))
        assert (error.operation, error.subject) == ("publish", "ipc.pub.md.ticks")
        assert await client.publish("ok.ticks", Echo(text="x")) > 0

        error = await refused(client.admin.promote("allowed", "a1", timeout=LONG))
        assert (error.operation, error.subject) == ("publish", "ipc.admin.promote")
        assert "ipc.admin.promote" in str(error) and "PERMISSION_DENIED" in str(error)
        assert (await client.admin.status()).router_id


async def test_subscriptions_and_serving_that_nats_refuses_fail_at_once(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    async with IPCClient(
        deployment.server.url, name="limited", credentials=deployment.limited
    ) as client:
        seen: list[Echo] = []

        async def on_event(event: Echo) -> None:
            seen.append(event)

        error = await refused(client.subscribe("md.>", on_event, model=Echo))
        assert (error.operation, error.subject) == ("subscribe", "ipc.pub.md.>")
        error = await refused(
            client.subscribe("ok.ticks", on_event, model=Echo, durable="ticks", ready_timeout=LONG)
        )
        assert error.operation == "publish" and "ipc_events" in error.subject.lower()
        sub = await client.subscribe("ok.>", on_event, model=Echo)
        await client.publish("ok.ticks", Echo(text="fine"))
        await until(lambda: seen == [Echo(text="fine")])
        await sub.stop()

        secret = Service("secret")

        @secret.method("read")
        async def read(req: Echo, ctx: CallContext) -> Echo:
            return req

        error = await refused(client.serve(secret, instance_id="s1", ready_timeout=LONG))
        assert error.operation == "subscribe" and error.subject.startswith("ipc.inst.secret.s1")
    refusals = [r for r in caplog.records if "NATS refused an operation" in r.getMessage()]
    # Each refusal was raised by its operation: that is the report, not a warning too.
    assert all(r.levelno < logging.WARNING for r in refusals)


# --- the registry, without a server ------------------------------------------------------


def test_violations_are_read_from_the_servers_text_in_either_case() -> None:
    assert parse_violation('nats: permissions violation for publish to "ipc.call.b.m"') == (
        "publish",
        "ipc.call.b.m",
    )
    assert parse_violation(
        'Permissions Violation for Subscription to "ipc.pub.>" using queue "q"'
    ) == ("subscribe", "ipc.pub.>")
    assert parse_violation("nats: maximum payload exceeded") is None
    assert subject_matches("$js.api.*.*.kv_x.>", "$js.api.consumer.info.kv_x.c")
    assert not subject_matches("$js.api.*.*.kv_x.>", "$js.api.stream.info.kv_x")
    assert subject_matches("a.*", "a.b") and not subject_matches("a.*", "a.b.c")


async def test_a_violation_fails_only_the_operations_on_its_subject() -> None:
    loop = asyncio.get_running_loop()
    permissions = Permissions()
    call, other, api = loop.create_future(), loop.create_future(), loop.create_future()
    permissions.watch(call, "publish", "ipc.call.B.m")
    permissions.watch(other, "publish", "ipc.call.c.m")
    permissions.watch(api, "publish", "$JS.API.*.*.KV_X")
    assert permissions.violated('nats: permissions violation for publish to "ipc.call.b.m"')
    assert isinstance(call.exception(), PermissionDeniedError)
    assert call.exception().subject == "ipc.call.B.m"  # type: ignore[union-attr]
    assert not other.done() and not api.done()
    permissions.violated('nats: permissions violation for publish to "$js.api.stream.info.kv_x"')
    assert isinstance(api.exception(), PermissionDeniedError)
    permissions.unwatch(other, "publish", "ipc.call.c.m")
    permissions.violated('nats: permissions violation for publish to "ipc.call.c.m"')
    assert not other.done()
    assert not permissions.violated("nats: slow consumer")
