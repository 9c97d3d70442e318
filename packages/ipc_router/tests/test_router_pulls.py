"""The router's continuous pull of calls, against a real nats-server: it never has more pull
requests waiting, or more calls in hand, than it accounts for, and it does not spin when
the server refuses to deliver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ipc_client_sdk.protocol import Codec, Subjects
from ipc_router.api import calls
from ipc_router.api.forwarded import ForwardedCalls
from ipc_router.application.registry import InstanceRegistry
from ipc_router.infrastructure.jetstream_setup import StorageSettings, provision
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing.waiting import eventually, until

SUBJECTS = Subjects()
MAX_INFLIGHT = 256

pytestmark = pytest.mark.slow  # the tests wait for pull requests to expire


class HoldingConsumer(calls.CallConsumer):
    """The real pull machinery; each call is held ``hold`` seconds, then acked."""

    hold = 0.0
    peak = 0
    handled = 0
    seen: set[int]

    async def _process(self, msg: Msg) -> None:
        self.seen.add(msg.metadata.sequence.stream)
        self.peak = max(self.peak, len(self._inflight))
        await asyncio.sleep(self.hold)
        await msg.ack()
        self.handled += 1


async def no_claims(key: str) -> bytes | None:
    return None


def holding(
    nc: NATS,
    *,
    max_inflight: int = 1024,
    ack_wait: float = 5.0,
    in_term: Callable[[], bool] = lambda: True,
) -> HoldingConsumer:
    """A holding consumer with no registry (the test routes nothing) and no claims."""
    return HoldingConsumer(
        nc,
        nc.jetstream(),
        SUBJECTS,
        Codec(),
        cast(InstanceRegistry, cast(Any, None)),  # routes nothing
        no_claims,
        ForwardedCalls(nc, SUBJECTS, ack_wait=ack_wait),
        max_inflight=max_inflight,
        ack_wait=ack_wait,
        in_term=in_term,
    )


@pytest.fixture
async def consumer(
    nats_server: NatsServerProcess, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[HoldingConsumer, NATS]]:
    monkeypatch.setattr(calls, "_PULL_EXPIRES", 1.0)  # pull requests expire quickly
    monkeypatch.setattr(calls, "_PULL_RETRY", 0.3)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await provision(js, SUBJECTS, StorageSettings())
    pulls = holding(nc, max_inflight=MAX_INFLIGHT)
    pulls.seen = set()
    await pulls.start()
    try:
        yield pulls, nc
    finally:
        await pulls.stop(grace=0.1)
        await nc.close()


async def publish(nc: NATS, count: int) -> None:
    js = nc.jetstream()
    subject = SUBJECTS.call("svc", "m", "raw")
    await asyncio.gather(*(js.publish(subject, b"call") for _ in range(count)))


async def waiting_pulls(nc: NATS) -> int:
    info = await nc.jetstream().consumer_info(SUBJECTS.calls_stream, SUBJECTS.calls_consumer)
    return int(info.num_waiting or 0)


async def test_pull_requests_and_calls_in_hand_stay_within_bounds(
    consumer: tuple[HoldingConsumer, NATS],
) -> None:
    pulls, nc = consumer
    sent = 0
    for _ in range(3):  # bursts, then idle until every pull request has expired
        for _ in range(4):
            await publish(nc, 300)
            sent += 300
            await asyncio.sleep(0.05)
        await until(lambda: pulls.handled == sent, 10)  # noqa: B023
        await asyncio.sleep(1.6)
        assert await waiting_pulls(nc) <= calls._PULLS
        assert len(pulls._pulls) <= calls._PULLS
    pulls.hold, pulls.peak = 2.0, 0
    await publish(nc, 2000)  # a backlog of slow calls
    await asyncio.sleep(1.0)  # the scenario: the bounds hold while the backlog waits
    assert pulls.peak <= MAX_INFLIGHT
    assert len(pulls._inflight) <= MAX_INFLIGHT
    assert await waiting_pulls(nc) <= calls._PULLS


async def test_a_deleted_consumer_is_made_again_without_spinning(
    consumer: tuple[HoldingConsumer, NATS],
) -> None:
    pulls, nc = consumer
    await publish(nc, 10)
    await until(lambda: pulls.handled == 10, 5)
    await nc.jetstream().delete_consumer(SUBJECTS.calls_stream, SUBJECTS.calls_consumer)
    before = next(pulls._pull_ids)
    await asyncio.sleep(1.5)
    asked = next(pulls._pull_ids) - before
    assert asked < 20, f"{asked} pull requests in 1.5 s: spinning"
    await publish(nc, 5)
    # Acks sent just before the delete may be lost with the consumer: those calls come
    # again (the real router answers a repeat from the record). The new ones must come.
    await until(lambda: set(range(11, 16)) <= pulls.seen, 5)  # the consumer was made again


async def test_a_call_larger_than_a_pull_allowance_does_not_block_the_rest(
    consumer: tuple[HoldingConsumer, NATS], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call bigger than any pull's byte allowance (a raw publisher, a server allowing
    large messages) is taken alone, handled (the real router answers it too large and
    removes it), and the calls behind it flow."""
    pulls, nc = consumer
    monkeypatch.setattr(calls, "_PULL_BYTES", 64 * 1024)
    await asyncio.sleep(1.3)  # the pulls asked for before the change expire (1 s here)
    await nc.jetstream().publish(SUBJECTS.call("svc", "m", "raw"), b"x" * (256 * 1024))
    await publish(nc, 5)
    await until(lambda: {1, 2, 3, 4, 5, 6} <= pulls.seen, 10)


async def test_calls_are_left_for_the_next_leader_once_the_leadership_term_has_ended(
    nats_server: NatsServerProcess,
) -> None:
    term = {"open": False}  # a leader that woke from a freeze: its term is over
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await provision(js, SUBJECTS, StorageSettings())
    pulls = holding(nc, ack_wait=1.0, in_term=lambda: term["open"])
    pulls.seen = set()
    await pulls.start()
    try:
        await publish(nc, 20)

        async def delivered_unacked() -> None:
            info = await js.consumer_info(SUBJECTS.calls_stream, SUBJECTS.calls_consumer)
            assert info.num_pending == 0 and info.num_ack_pending == 20, "not delivered"

        await eventually(delivered_unacked, within=10, retry_on=(AssertionError,), interval=0.05)
        assert pulls.seen == set() and pulls.handled == 0
        term["open"] = True  # e.g. the next leader: JetStream delivers them again
        await until(lambda: pulls.handled == 20, within=15)
    finally:
        await pulls.stop(grace=0.1)
        await nc.close()
