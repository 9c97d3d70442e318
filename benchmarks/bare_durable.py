"""The durable call protocol written with bare nats-py: the floor ``rpc.py`` measures the
product's durable path against.

    uv run python benchmarks/bare_durable.py serve-router <nats-url> <instance-inbox>
    uv run python benchmarks/bare_durable.py serve-instance <nats-url> <instance-inbox>

(``rpc.py`` starts both and calls through them; run alone they only serve.)

The same JetStream operations per call as AegisIPC's durable path, in the same processes,
with nothing else: MessagePack only (no Pydantic, no envelope checks, no metrics, traces
or logs), one static route, no fencing, heartbeats or failover.

- **caller** (``BareCaller``, in ``rpc.py``'s process): publishes the call into the
  work-queue stream ``BARE_CALLS`` with ``Nats-Msg-Id`` set to its call id and waits for
  JetStream's ack, then for the answer on its reply inbox;
- **router** (``serve-router``): keeps pull requests outstanding on a durable pull
  consumer of ``BARE_CALLS`` and reads each call's routing fields; then, by the call's
  ``mode``:

  - ``relay`` (today's shape): a core request to the instance's inbox, the answer
    published to the caller's reply address, then the stream message acked;
  - ``forward``, ``forward-seq``, ``one-write``: the call forwarded to the instance with
    the caller's reply address as its reply subject and the ack subject inside; the router
    is then done with it;

- **instance** (``serve-instance``): claims the call with a KV create on
  ``bare_results`` (an expected last subject sequence of 0), runs the handler, and records
  the outcome with a KV update against the claim's revision; then, by ``mode``:

  - ``relay``: the outcome recorded, then the answer to the router;
  - ``forward-seq``: the outcome recorded, then the answer to the caller, then the ack;
  - ``forward``: the answer to the caller and the outcome's write sent together, then,
    once the outcome is stored, the ack (the claim still comes first);
  - ``one-write``: no claim: the handler runs, its outcome is created once (a KV create),
    then the answer and the ack.

Each process uses one wildcard reply subscription with a counter token per awaited reply
(what the product's ``ReplyInbox`` does), and no timer per call: one sweep per process
fails the replies that are overdue. The router keeps no task per call (a dict of the
relayed calls by token); the instance runs each call in a task of its own, because the
handler is async code, as a user's is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from _bench import serve_until_term

STREAM = "BARE_CALLS"
CALLS = "bare.calls"
CONSUMER = "bare-router"
BUCKET = "bare_results"
SERVICE = "orders"
METHOD = "place"
MODES = ("relay", "forward", "forward-seq", "one-write")
"""How a call travels (see the module's text); the caller names it in each call."""

TIMEOUT = 10.0
"""Seconds any awaited reply may take before the sweep fails it."""

_SWEEP_EVERY = 0.5
_PULLS = 2
_PULL_BATCH = 256
_PULL_EXPIRES = 1.0
_CLAIM = b"\x00"
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_ACK = b"+ACK"


class Inbox:
    """One wildcard subscription; each awaited reply is a future under a counter token,
    or a coroutine function called with the reply. Replies not in after ``timeout`` are
    failed by a sweep (tokens are handed out in order, so the oldest come first)."""

    def __init__(self, nc: NATS, timeout: float = TIMEOUT) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[str, tuple[float, Any]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe and start the sweep."""
        prefix = self._nc.new_inbox()
        await self._nc.subscribe(prefix + ".*", cb=self._on_reply, pending_msgs_limit=1_000_000)
        self._prefix = prefix + "."
        self._sweeper = asyncio.create_task(self._sweep())

    def expect(self) -> tuple[str, asyncio.Future[Msg]]:
        """A fresh reply subject and the future its reply completes."""
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        return self.on(future), future

    def on(self, handler: asyncio.Future[Msg] | Callable[[Msg | None], Awaitable[None]]) -> str:
        """A fresh reply subject whose reply completes ``handler`` (a future) or is passed to
        it (a coroutine function, given None when the reply is overdue)."""
        subject = f"{self._prefix}{next(self._tokens):x}"
        self._waiting[subject] = (time.monotonic() + self._timeout, handler)
        return subject

    async def request(self, subject: str, data: bytes, headers: dict[str, str] | None) -> Msg:
        """Publish with a reply subject and wait for the reply.

        Raises:
            TimeoutError: no reply within the timeout.
        """
        reply, future = self.expect()
        await self._nc.publish(subject, data, reply=reply, headers=headers)
        return await future

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject, None)
        if entry is None:
            return
        handler = entry[1]
        if isinstance(handler, asyncio.Future):
            if not handler.done():
                handler.set_result(msg)
        else:
            await handler(msg)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_EVERY)
            now = time.monotonic()
            for subject, (due, handler) in list(self._waiting.items()):
                if due > now:
                    break
                del self._waiting[subject]
                if isinstance(handler, asyncio.Future):
                    if not handler.done():
                        handler.set_exception(TimeoutError(subject))
                else:
                    await handler(None)


def _stored(ack: Msg) -> int | None:
    """The sequence JetStream stored a message at, or None when it refused it."""
    if b'"error"' in ack.data:
        return None
    return int(json.loads(ack.data)["seq"])


# --- the caller ---------------------------------------------------------------------------
class BareCaller:
    """Calls through the bare router: publish into the stream, await the ack, then the
    answer."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._inbox = Inbox(nc)
        self._ids = itertools.count(1)
        self._run = f"{time.time_ns():x}"
        self._subject = f"{CALLS}.{SERVICE}.{METHOD}"

    async def start(self) -> None:
        """Subscribe the reply inbox."""
        await self._inbox.start()

    async def call(self, mode: str, resource_id: str, order: dict[str, Any]) -> Any:
        """One call: the handler's answer.

        Raises:
            RuntimeError: the stream refused the call, or the instance answered an error.
            TimeoutError: no ack or no answer in time.
        """
        call_id = f"{self._run}-{next(self._ids):x}"
        reply_to, answer = self._inbox.expect()
        body = msgpack.packb([call_id, mode, resource_id, time.time() + TIMEOUT, reply_to, order])
        ack = await self._inbox.request(self._subject, body, {"Nats-Msg-Id": call_id})
        if _stored(ack) is None:
            raise RuntimeError(f"the stream refused the call: {ack.data!r}")
        result = msgpack.unpackb((await answer).data)
        if "error" in result:
            raise RuntimeError(result["error"])
        return result


# --- the router ---------------------------------------------------------------------------
async def serve_router(url: str, instance_inbox: str) -> None:
    """Set up the stream, the bucket and the consumer; route every call to the one
    instance (epoch 1) until SIGTERM."""
    nc = await nats.connect(url, name="bare-router")
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=STREAM,
            subjects=[f"{CALLS}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
    )
    await js.create_key_value(KeyValueConfig(bucket=BUCKET, storage=StorageType.FILE))
    try:
        await js.consumer_info(STREAM, CONSUMER)
    except NotFoundError:
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=5.0,
                max_ack_pending=4096,
                max_deliver=-1,
            ),
        )
    router = BareRouter(nc, {"acc_1": (instance_inbox, 1)})
    await router.start()
    await serve_until_term()
    await nc.drain()


class BareRouter:
    """Pulls calls continuously and sends each to its instance (see the module's text)."""

    def __init__(self, nc: NATS, routes: dict[str, tuple[str, int]]) -> None:
        self._nc = nc
        self._routes = routes
        self._inbox = Inbox(nc)
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{CONSUMER}"
        self._deliver = ""
        self._pulls: dict[str, list[float]] = {}  # reply subject -> [calls left, sent at]
        self._pull_ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Subscribe the deliveries and the answers; start pulling."""
        await self._inbox.start()
        self._deliver = self._nc.new_inbox()
        await self._nc.subscribe(
            self._deliver + ".*", cb=self._on_delivery, pending_msgs_limit=1_000_000
        )
        await self._top_up()
        self._tasks.append(asyncio.create_task(self._keep_pulling()))

    async def _top_up(self) -> None:
        """Keep ``_PULLS`` pull requests outstanding."""
        now = time.monotonic()
        for subject, (_, sent) in list(self._pulls.items()):
            if now - sent > _PULL_EXPIRES + 0.5:
                del self._pulls[subject]  # expired, announced or not
        while len(self._pulls) < _PULLS:
            reply = f"{self._deliver}.{next(self._pull_ids):x}"
            self._pulls[reply] = [_PULL_BATCH, now]
            request = {"batch": _PULL_BATCH, "expires": int(_PULL_EXPIRES * 1e9)}
            await self._nc.publish(self._next, json.dumps(request).encode(), reply=reply)

    async def _keep_pulling(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            await self._top_up()

    async def _on_delivery(self, msg: Msg) -> None:
        if not msg.reply:  # the server's word on a pull request: it is over
            self._pulls.pop(msg.subject, None)
            await self._top_up()
            return
        # A call arrives under its own subject, not the pull's: the server fills the pull
        # requests in the order they came, so it counts against the oldest.
        for subject, pull in self._pulls.items():
            pull[0] -= 1
            if pull[0] <= 0:
                del self._pulls[subject]
                await self._top_up()
            break
        ack = msg.reply
        _, mode, resource_id, deadline, reply_to, _ = msgpack.unpackb(msg.data)
        if deadline <= time.time():
            await self._nc.publish(reply_to, msgpack.packb({"error": "deadline exceeded"}))
            await self._nc.publish(ack, _ACK)
            return
        inbox, epoch = self._routes[resource_id]
        delivery = int(ack.split(".", 5)[4])  # $JS.ACK.<stream>.<consumer>.<delivered>...
        if mode != "relay":
            # Forward: the instance answers the caller and acks; the router is done.
            data = msgpack.packb([epoch, delivery, ack, msg.data])
            await self._nc.publish(inbox, data, reply=reply_to)
            return

        async def relay(answer: Msg | None) -> None:
            if answer is None:
                return  # no answer in time: un-acked, so JetStream redelivers it
            await self._nc.publish(reply_to, answer.data)
            await self._nc.publish(ack, _ACK)

        data = msgpack.packb([epoch, delivery, None, msg.data])
        await self._nc.publish(inbox, data, reply=self._inbox.on(relay))


# --- the instance -------------------------------------------------------------------------
async def serve_instance(url: str, instance_inbox: str) -> None:
    """Serve ``orders.place`` on ``instance_inbox`` until SIGTERM."""
    nc = await nats.connect(url, name="bare-instance")
    instance = BareInstance(nc, "o1")
    await instance.start(instance_inbox)
    await serve_until_term()
    await nc.drain()


async def place(order: dict[str, Any], instance_id: str) -> dict[str, Any]:
    """The handler: the same acknowledgement as ``rpc.py``'s."""
    return {
        "client_order_id": order["client_order_id"],
        "status": "accepted",
        "filled": 0,
        "price": order["price"],
        "instance_id": instance_id,
    }


class BareInstance:
    """Claims, runs, records and answers each call (see the module's text)."""

    def __init__(self, nc: NATS, instance_id: str) -> None:
        self._nc = nc
        self._id = instance_id
        self._inbox = Inbox(nc)
        self._claim = _CLAIM + instance_id.encode()
        self._keys = f"$KV.{BUCKET}.{SERVICE}.{METHOD}."
        self._running: set[asyncio.Task[None]] = set()

    async def start(self, subject: str) -> None:
        """Subscribe the reply inbox and the instance's inbox."""
        await self._inbox.start()
        await self._nc.subscribe(subject, cb=self._on_call, pending_msgs_limit=1_000_000)

    async def _on_call(self, msg: Msg) -> None:
        task = asyncio.create_task(self._handle(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _write(self, key: str, value: bytes, last: int) -> int | None:
        """A KV write against revision ``last`` (0: the key holds nothing); the new
        revision, or None when the key is at another."""
        headers = {_EXPECTED_LAST: str(last)}
        return _stored(await self._inbox.request(key, value, headers))

    async def _handle(self, msg: Msg) -> None:
        _epoch, _delivery, ack, body = msgpack.unpackb(msg.data)
        call_id, mode, _, deadline, _, order = msgpack.unpackb(body)
        nc, key = self._nc, self._keys + call_id
        if deadline <= time.time():
            await self._fail(msg.reply, ack, "deadline exceeded")
            return
        if mode == "one-write":
            answer = msgpack.packb(await place(order, self._id))
            if await self._write(key, answer, 0) is None:
                await self._fail(msg.reply, ack, "already answered")  # a repeat: read it
                return
            await nc.publish(msg.reply, answer)
            await nc.publish(ack, _ACK)
            return
        claim = await self._write(key, self._claim, 0)
        if claim is None:
            await self._fail(msg.reply, ack, "already claimed")  # a repeat: wait, read it
            return
        answer = msgpack.packb(await place(order, self._id))
        if mode == "forward":
            # The answer and the outcome's write leave together; ack once it is stored.
            recorded = self._inbox.expect()
            await nc.publish(msg.reply, answer)
            await nc.publish(key, answer, reply=recorded[0], headers={_EXPECTED_LAST: str(claim)})
            if _stored(await recorded[1]) is not None:
                await nc.publish(ack, _ACK)
            return
        if await self._write(key, answer, claim) is None:
            await self._fail(msg.reply, ack, "outcome not recorded")
            return
        await nc.publish(msg.reply, answer)
        if ack is not None:  # forward-seq: the instance acks; relay: the router does
            await nc.publish(ack, _ACK)

    async def _fail(self, reply: str, ack: str | None, why: str) -> None:
        await self._nc.publish(reply, msgpack.packb({"error": why}))
        if ack is not None:
            await self._nc.publish(ack, _ACK)


def main() -> None:
    """Run one of the serving processes."""
    role, url, inbox = sys.argv[1:4]
    serve = {"serve-router": serve_router, "serve-instance": serve_instance}[role]
    asyncio.run(serve(url, inbox))


if __name__ == "__main__":
    main()
