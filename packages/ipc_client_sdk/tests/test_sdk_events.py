"""Router events: ``client.admin.events(kinds=...)`` streams, and unsubscribes when done."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from ipc_client_sdk import (
    ClientStateError,
    EventKind,
    InvalidArgumentError,
    IPCClient,
    RouterEvent,
    RouterEvents,
)
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import eventually
from ipc_testing.workload import CountingService


async def next_event(events: RouterEvents, within: float = 10.0) -> RouterEvent:
    async with asyncio.timeout(within):
        return await anext(events)


async def event_subscriptions(server: NatsServerProcess, client_name: str) -> list[str]:
    """The subjects ``client_name``'s connection subscribes to under ``ipc.events``, as the
    server's monitoring endpoint reports them."""
    url = f"http://{server.config.host}:{server.config.monitor_port}/connz?subs=1"

    def get() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=5) as answer:
            found: dict[str, Any] = json.load(answer)
            return found

    connz = await asyncio.to_thread(get)
    return [
        subject
        for conn in connz.get("connections") or []
        if conn.get("name") == client_name
        for subject in conn.get("subscriptions_list") or []
        if subject.startswith("ipc.events.")
    ]


async def subscribed(server: NatsServerProcess, client_name: str, expected: bool) -> None:
    assert bool(await event_subscriptions(server, client_name)) is expected


async def test_a_stream_yields_the_kinds_asked_for_once_live(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    async with (
        caller.admin.events(kinds={"registry"}) as registry,
        caller.admin.events() as every,
    ):
        assert registry.kinds == frozenset({EventKind.REGISTRY}) and every.kinds is None
        await server.serve(CountingService().service, instance_id="b1", resources=["acc_1"])
        first = await next_event(registry)
        assert (first.kind, first.service, first.instance_id) == ("registry", "service_b", "b1")
        assert first.state == "registered"
        seen = [await next_event(every)]
        while not any(e.kind == EventKind.ROLE for e in seen):
            seen.append(await next_event(every))
        role = next(e for e in seen if e.kind == EventKind.ROLE)
        assert (role.instance_id, role.role) == ("b1", "active")
        with pytest.raises(TimeoutError):  # nothing else is registered
            await next_event(registry, within=0.5)
        assert registry.dropped == every.dropped == 0


async def test_a_stream_survives_a_timed_out_wait_and_ends_when_closed(
    clients: tuple[IPCClient, IPCClient], nats_server: NatsServerProcess
) -> None:
    caller, server = clients
    events = caller.admin.events(kinds=[EventKind.REGISTRY])
    async with events:
        assert await event_subscriptions(nats_server, "svc_a") == ["ipc.events.registry"]
        with pytest.raises(TimeoutError):
            await next_event(events, within=0.2)
        await server.serve(CountingService().service, instance_id="b1")
        assert (await next_event(events)).instance_id == "b1"  # still live after the timeout
        async with caller.admin.events(kinds={"registry"}) as witness:
            await server.serve(CountingService().service, instance_id="b2")
            # Seen here, so waiting unread in ``events`` too (one connection, one message).
            assert (await next_event(witness)).instance_id == "b2"

    async def unsubscribed() -> None:  # the UNSUB reaches the server with the next flush
        assert await event_subscriptions(nats_server, "svc_a") == []

    await eventually(unsubscribed, within=5, retry_on=(AssertionError,))
    assert [e async for e in events] == []  # closed: it ends at once, unread events too
    await events.aclose()  # a second close is harmless


async def test_breaking_out_of_async_for_unsubscribes(
    clients: tuple[IPCClient, IPCClient], nats_server: NatsServerProcess
) -> None:
    caller, server = clients
    service = CountingService().service

    async def first_registration() -> RouterEvent:
        async for event in caller.admin.events(kinds={"registry"}):
            return event  # leaves the loop; the dropped stream unsubscribes
        raise AssertionError("the stream ended")

    waiting = asyncio.create_task(first_registration())
    await eventually(lambda: subscribed(nats_server, "svc_a", True), within=10)
    await server.serve(service, instance_id="b1")
    assert (await asyncio.wait_for(waiting, 10)).instance_id == "b1"
    await eventually(lambda: subscribed(nats_server, "svc_a", False), within=10)


async def test_closing_the_client_ends_the_stream(nats_server: NatsServerProcess) -> None:
    client = IPCClient(nats_server.url, name="watcher")
    async with client:
        events = await client.admin.events().start()
        reading = asyncio.create_task(anext(events, None))
        await asyncio.sleep(0)
    assert await asyncio.wait_for(reading, 5) is None


async def test_bad_arguments_are_refused_before_anything_is_sent(
    nats_server: NatsServerProcess,
) -> None:
    async with IPCClient(nats_server.url, name="watcher") as client:
        for kinds in ({"nope"}, "role", set()):
            with pytest.raises(InvalidArgumentError):
                client.admin.events(kinds=kinds)
        for bound in ({"max_pending": 0}, {"max_pending": True}, {"max_outage": 0}):
            with pytest.raises(InvalidArgumentError):
                client.admin.events(**bound)
    with pytest.raises(ClientStateError):
        await client.admin.events().start()
