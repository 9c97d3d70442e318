"""Publish/subscribe against a real nats-server and router: fan-out, queue groups, durable
replay, dead letters, order."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sized
from decimal import Decimal

import pytest
from nats.aio.client import Client as NATS
from pydantic import BaseModel

from ipc_client_sdk import (
    DeadLetter,
    EventContext,
    InvalidArgumentError,
    IPCClient,
    RouterUnavailableError,
    Subscription,
)
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import RouterProcess, eventually


class Tick(BaseModel):
    symbol: str
    price: Decimal
    n: int


def tick(n: int, symbol: str = "AAPL") -> Tick:
    return Tick(symbol=symbol, price=Decimal("187.25") + n, n=n)


async def has(values: Sized, count: int) -> None:
    assert len(values) >= count, f"{len(values)} < {count}"


async def test_fan_out_every_subscriber_gets_every_event_on_matching_topics(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    got: dict[str, list[Tick]] = {"a": [], "b": [], "all": []}
    async with (
        IPCClient(nats_server.url, name="pub1") as pub1,
        IPCClient(nats_server.url, name="pub2") as pub2,
        IPCClient(nats_server.url, name="subs") as subs,
    ):
        for name, pattern in (("a", "md.ticks.*"), ("b", "md.ticks.*"), ("all", "md.>")):

            async def on_tick(t: Tick, name: str = name) -> None:
                got[name].append(t)

            await subs.subscribe(pattern, on_tick, model=Tick)
        for n in range(10):
            await (pub1 if n % 2 else pub2).publish(
                f"md.ticks.{'AAPL' if n < 5 else 'MSFT'}", tick(n)
            )
        await pub1.publish("md.depth.AAPL", tick(99))
        await eventually(lambda: has(got["all"], 11), within=10)
        await eventually(lambda: has(got["b"], 10), within=10)
        await asyncio.sleep(0.2)  # nothing more arrives
    assert sorted(t.n for t in got["a"]) == list(range(10))
    assert sorted(t.n for t in got["b"]) == list(range(10))
    assert sorted(t.n for t in got["all"]) == [*range(10), 99]
    assert got["a"][0].price == Decimal("187.25")  # exact, typed


async def test_a_queue_group_shares_the_events_between_its_members(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    seen: Counter[int] = Counter()
    by_member: Counter[str] = Counter()
    async with IPCClient(nats_server.url, name="pub") as pub:
        members = [IPCClient(nats_server.url, name=f"m{i}") for i in range(3)]
        try:
            for i, member in enumerate(members):
                await member.connect()

                async def on_tick(t: Tick, i: int = i) -> None:
                    seen[t.n] += 1
                    by_member[f"m{i}"] += 1

                await member.subscribe("orders.new", on_tick, model=Tick, queue="workers")
            for n in range(60):
                await pub.publish("orders.new", tick(n))
            await eventually(lambda: has(list(seen.elements()), 60), within=10)
            await asyncio.sleep(0.2)  # nothing more arrives: no event goes to two members
        finally:
            for member in members:
                await member.close()
    assert set(seen) == set(range(60)) and set(seen.values()) == {1}  # each event once
    assert len(by_member) >= 2, by_member  # shared, not all on one member


async def test_a_durable_subscriber_replays_what_it_missed_after_a_restart(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    got: list[int] = []

    async def on_tick(t: Tick) -> None:
        got.append(t.n)

    async with IPCClient(nats_server.url, name="pub") as pub:
        async with IPCClient(nats_server.url, name="risk") as first:
            await first.subscribe("md.ticks.AAPL", on_tick, model=Tick, durable="risk")
            for n in range(5):
                await pub.publish("md.ticks.AAPL", tick(n))
            await eventually(lambda: has(got, 5), within=10)
        # The subscriber is gone; these wait in the stream for it.
        for n in range(5, 12):
            await pub.publish("md.ticks.AAPL", tick(n))
        async with IPCClient(nats_server.url, name="risk-restarted") as second:
            sub = await second.subscribe("md.ticks.AAPL", on_tick, model=Tick, durable="risk")
            await eventually(lambda: has(got, 12), within=10)
            await asyncio.sleep(0.3)  # nothing more arrives: nothing is replayed twice
            await sub.stop()
    assert got == list(range(12))  # the missed ones, once each, in order; nothing replayed twice


async def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered(
    nats_server: NatsServerProcess, router: RouterProcess, raw_nats: NATS
) -> None:
    attempts: list[tuple[int, int]] = []
    letters: list[DeadLetter] = []
    handled: list[int] = []

    async def on_tick(t: Tick, ctx: EventContext) -> None:
        attempts.append((t.n, ctx.deliveries))
        if t.n == 1:
            raise RuntimeError("cannot price it")
        handled.append(t.n)

    async def on_letter(letter: DeadLetter) -> None:
        letters.append(letter)

    async with IPCClient(nats_server.url, name="app") as client:
        await client.subscribe("dlq.>", on_letter, model=DeadLetter)  # see the raw letters
        dlq = await raw_nats.subscribe(client.subjects.dead_letter_all)
        await raw_nats.flush()
        await client.subscribe(
            "md.ticks.AAPL",
            on_tick,
            model=Tick,
            durable="pricer",
            max_deliveries=3,
            backoff=(0.05, 0.1),
        )
        for n in range(3):
            await client.publish("md.ticks.AAPL", tick(n), event_id=f"tick-{n}")
        await eventually(lambda: has(handled, 2), within=10)
        raw = await dlq.next_msg(timeout=5)
        letter = client.codec.decode_envelope(raw.data, DeadLetter)
    assert [d for n, d in attempts if n == 1] == [1, 2, 3]
    assert handled == [0, 2]  # the failing event did not block the next one for good
    assert letter.event.event_id == "tick-1" and letter.deliveries == 3
    assert letter.subscriber == "pricer"
    assert "RuntimeError: cannot price it" in letter.error.message
    assert client.codec.decode(letter.event.payload, Tick) == tick(1)
    assert letters == []  # 'dlq.>' is a topic pattern under pub, not the dead-letter subject


async def test_an_event_that_does_not_fit_the_model_is_dead_lettered_at_once(
    nats_server: NatsServerProcess, router: RouterProcess, raw_nats: NATS
) -> None:
    good: list[int] = []

    async def on_tick(t: Tick) -> None:
        good.append(t.n)

    async with IPCClient(nats_server.url, name="app") as client:
        dlq = await raw_nats.subscribe(client.subjects.dead_letter_all)
        await raw_nats.flush()
        await client.subscribe("md.ticks.*", on_tick, model=Tick)  # plain
        await client.subscribe("md.ticks.*", on_tick, model=Tick, durable="strict")
        await client.publish("md.ticks.AAPL", {"symbol": "AAPL", "price": "not a price"})
        await raw_nats.publish(client.subjects.topic("md.ticks.AAPL"), b"\xc1garbage")
        await raw_nats.flush()
        await client.publish("md.ticks.AAPL", tick(7))
        await eventually(lambda: has(good, 2), within=10)
        letters = [client.codec.decode_envelope((await dlq.next_msg(timeout=5)).data, DeadLetter)]
        for _ in range(3):
            letters.append(
                client.codec.decode_envelope((await dlq.next_msg(timeout=5)).data, DeadLetter)
            )
    assert good == [7, 7]  # both subscribers went on
    assert {letter.subscriber for letter in letters} == {"strict", "app/md.ticks.*"}
    assert all(letter.deliveries == 1 for letter in letters)
    assert any("price" in letter.error.message for letter in letters)
    assert sum(letter.event.event_id == "unreadable" for letter in letters) == 2  # the garbage
    unfit = [letter for letter in letters if letter.event.event_id != "unreadable"]
    assert all(
        letter.event.topic == "md.ticks.AAPL" and letter.event.published_at for letter in unfit
    )


async def test_a_durable_subscription_keeps_the_order_of_each_subject_through_retries(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    got: dict[str, list[int]] = {"AAPL": [], "MSFT": []}
    failed_once: set[int] = set()

    async def on_tick(t: Tick) -> None:
        await asyncio.sleep(random.random() / 200)
        if t.n % 7 == 3 and t.n not in failed_once:
            failed_once.add(t.n)
            raise RuntimeError("transient")
        got[t.symbol].append(t.n)

    async with IPCClient(nats_server.url, name="app") as client:
        for n in range(40):
            symbol = "AAPL" if n % 2 else "MSFT"
            await client.publish(f"md.ticks.{symbol}", tick(n, symbol))
        await client.subscribe(
            "md.ticks.*", on_tick, model=Tick, durable="ordered", backoff=(0.01,)
        )
        await eventually(lambda: has(got["AAPL"] + got["MSFT"], 40), within=15)
    assert got["AAPL"] == [n for n in range(40) if n % 2]
    assert got["MSFT"] == [n for n in range(40) if not n % 2]
    assert failed_once  # retries happened


async def test_bad_subscribe_and_publish_arguments_are_refused_before_anything_is_sent(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    async def ok(t: Tick) -> None: ...

    def not_async(t: Tick) -> None: ...

    async with IPCClient(nats_server.url) as client:
        for bad in ("", "a..b", "md.>.x", "md ticks", "x" * 300):
            with pytest.raises(InvalidArgumentError):
                await client.subscribe(bad, ok)
        with pytest.raises(InvalidArgumentError, match="not in a topic you publish on"):
            await client.publish("md.ticks.*", tick(1))
        with pytest.raises(InvalidArgumentError, match="async def"):
            await client.subscribe("md.x", not_async)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="queue is for plain"):
            await client.subscribe("md.x", ok, queue="q", durable="d")
        with pytest.raises(InvalidArgumentError, match="max_deliveries"):
            await client.subscribe("md.x", ok, durable="d", max_deliveries=0)
        with pytest.raises(InvalidArgumentError, match="backoff"):
            await client.subscribe("md.x", ok, backoff=(-1,))


async def test_without_a_router_durable_subscribe_and_publish_say_so(
    nats_server: NatsServerProcess,
) -> None:
    async def ok(t: Tick) -> None: ...

    async with IPCClient(nats_server.url) as client:
        with pytest.raises(RouterUnavailableError, match="does not exist after 0.3s"):
            await client.subscribe("md.x", ok, durable="d", ready_timeout=0.3)
        with pytest.raises(RouterUnavailableError):
            await client.publish("md.x", tick(1), timeout=3)


async def test_a_durable_name_keeps_its_pattern(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    async def ok(t: Tick) -> None: ...

    async with IPCClient(nats_server.url) as client:
        sub = await client.subscribe("md.ticks.*", ok, model=Tick, durable="risk")
        await sub.stop()
        with pytest.raises(InvalidArgumentError, match="already follows 'md.ticks.\\*'"):
            await client.subscribe("orders.>", ok, durable="risk")
        again = await client.subscribe("md.ticks.*", ok, model=Tick, durable="risk")
        assert again.active


async def test_an_event_that_keeps_killing_its_subscriber_is_dead_lettered_unhandled(
    nats_server: NatsServerProcess, router: RouterProcess, raw_nats: NATS
) -> None:
    handled: list[int] = []

    async def on_tick(t: Tick) -> None:
        handled.append(t.n)

    async with IPCClient(nats_server.url, name="app") as client:
        await client.publish("md.ticks.AAPL", tick(1), event_id="poison")
        sub = await client.subscribe("md.ticks.AAPL", on_tick, model=Tick, durable="victim")
        await sub.stop()
        # Three deliveries that were never acked: as if the handler crashed the process.
        raw = await raw_nats.jetstream().pull_subscribe(
            client.subjects.topic_pattern("md.ticks.AAPL"),
            durable="victim",
            stream=client.subjects.events_stream,
        )
        for _ in range(3):
            (msg,) = await raw.fetch(1, timeout=5)
            await msg.nak()
        await raw.unsubscribe()
        dlq = await raw_nats.subscribe(client.subjects.dead_letter_all)
        await raw_nats.flush()
        await client.subscribe(
            "md.ticks.AAPL", on_tick, model=Tick, durable="victim", max_deliveries=3
        )
        letter = client.codec.decode_envelope((await dlq.next_msg(timeout=10)).data, DeadLetter)
    assert handled == []
    assert (letter.event.event_id, letter.deliveries) == ("poison", 4)
    assert "without being acknowledged" in letter.error.message


async def test_stopping_a_durable_subscription_gives_unhandled_events_back_in_order(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    first: list[int] = []
    second: list[int] = []
    stopping = asyncio.Event()

    async def slow(t: Tick) -> None:
        if t.n == 3:
            stopping.set()
            await asyncio.sleep(0.3)
        first.append(t.n)

    async def fast(t: Tick) -> None:
        second.append(t.n)

    async with IPCClient(nats_server.url, name="app") as client:
        for n in range(20):
            await client.publish("md.ticks.AAPL", tick(n))
        sub = await client.subscribe("md.ticks.AAPL", slow, model=Tick, durable="resume")
        await stopping.wait()
        await sub.stop(timeout=5)  # the running handler finishes; the rest is given back
        await client.publish("md.ticks.AAPL", tick(100))
        await client.subscribe("md.ticks.AAPL", fast, model=Tick, durable="resume")
        await eventually(lambda: has([*first, *second], 21), within=10)
    assert first == [0, 1, 2, 3]
    assert second == [*range(4, 20), 100]  # nothing lost, nothing twice, in order


async def test_stop_waits_for_a_running_handler_and_may_be_called_from_one(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    done: list[str] = []
    subs: list[Subscription] = []
    running = asyncio.Event()

    async def plain(t: Tick) -> None:
        running.set()
        await asyncio.sleep(0.3)  # still running when stop() is called
        done.append("plain")

    async def quits(t: Tick) -> None:
        await subs[0].stop()  # from inside its own handler: must not deadlock
        done.append("durable")

    async with IPCClient(nats_server.url, name="app") as client:
        subs.append(await client.subscribe("md.quit", quits, model=Tick, durable="quitter"))
        sub = await client.subscribe("md.slow", plain, model=Tick)
        await client.publish("md.slow", tick(1))
        await client.publish("md.quit", tick(2))
        await asyncio.wait_for(running.wait(), 10)
        await sub.stop(timeout=5)
        await eventually(lambda: has(done, 2), within=5)
    assert sorted(done) == ["durable", "plain"]
    assert not subs[0].active


async def test_a_hanging_subject_does_not_hold_up_the_others(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    release = asyncio.Event()
    got: list[str] = []

    async def on_tick(t: Tick) -> None:
        if t.symbol == "AAPL":
            await release.wait()  # stuck, as a handler waiting on a dead dependency is
        got.append(t.symbol)

    async with IPCClient(nats_server.url, name="app") as client:
        await client.publish("md.ticks.AAPL", tick(0, "AAPL"))
        for n in range(5):
            await client.publish("md.ticks.MSFT", tick(n, "MSFT"))
        sub = await client.subscribe("md.ticks.*", on_tick, model=Tick, durable="lanes")
        await eventually(lambda: has(got, 5), within=10)
        assert got == ["MSFT"] * 5
        release.set()
        await eventually(lambda: has(got, 6), within=10)
        await sub.stop()


async def test_a_handler_raising_cancelled_is_a_failure_not_the_end_of_the_subscription(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    got: list[int] = []

    async def on_tick(t: Tick, ctx: EventContext) -> None:
        if t.n == 0 and ctx.deliveries == 1:
            raise asyncio.CancelledError  # it awaited something that was cancelled
        got.append(t.n)

    async with IPCClient(nats_server.url, name="app") as client:
        sub = await client.subscribe(
            "md.ticks.AAPL", on_tick, model=Tick, durable="survivor", backoff=(0.05,)
        )
        for n in range(3):
            await client.publish("md.ticks.AAPL", tick(n))
        await eventually(lambda: has(got, 3), within=10)
        assert sub.active
    assert got == [0, 1, 2]  # retried, in order
