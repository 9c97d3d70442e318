"""The router's call path against bad input: every case answered or dropped, never stuck,
and a flood of it costs the router's log kilobytes, not megabytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import msgpack
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ipc_client_sdk import IPCClient
from ipc_client_sdk.protocol import (
    DEFAULT_MAX_PAYLOAD,
    ENVELOPE_OVERHEAD,
    REPLY_TO_HEADER,
    CallReply,
    CallRequest,
    Codec,
    ErrorCode,
    Subjects,
)
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import RouterProcess, eventually
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

SUBJECTS = Subjects()
CODEC = Codec()
TARGET = SUBJECTS.call("service_b", "do_work", "raw")


@pytest.fixture
async def raw(nats_server: NatsServerProcess, router: RouterProcess) -> AsyncIterator[NATS]:
    """A plain nats-py connection, to send what the SDK never would."""
    nc = await nats.connect(nats_server.url)
    try:
        yield nc
    finally:
        await nc.close()


async def send_raw(
    nc: NATS, data: bytes, *, subject: str = TARGET, reply_header: bool = True
) -> CallReply | None:
    """Publish ``data`` into the calls stream; return the router's answer, if any."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    headers = {REPLY_TO_HEADER: inbox} if reply_header else None
    await nc.jetstream().publish(subject, data, headers=headers)
    try:
        msg = await sub.next_msg(timeout=5)
    except TimeoutError:
        return None
    finally:
        await sub.unsubscribe()
    return CODEC.decode_envelope(msg.data, CallReply)


def request(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": 1,
        "call_id": "raw-1",
        "service": "service_b",
        "method": "do_work",
        "payload": msgpack.packb({}),
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


async def stream_is_empty(nc: NATS) -> None:
    info = await nc.jetstream().stream_info(SUBJECTS.calls_stream)
    assert info.state.messages == 0, info.state


async def assert_a_good_call_is_answered(url: str) -> None:
    """Serve ``service_b`` and call it once: the router still routes calls."""
    async with IPCClient(url) as client:
        svc = CountingService()
        await client.serve(svc.service, instance_id="b1")
        result = await client.call(
            "service_b.do_work",
            WorkRequest(
                account="acc_1", amount=Decimal(1), placed_at=datetime(2026, 11, 28, tzinfo=UTC)
            ),
            returns=WorkResult,
        )
    assert result.account == "acc_1"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        pytest.param(b"\xc1\x00garbage", "malformed", id="malformed-msgpack"),
        pytest.param(msgpack.packb([1, 2, 3]), "must be a map", id="not-a-map"),
        pytest.param(msgpack.packb(request(v=99)), "protocol version 99", id="unknown-version"),
        pytest.param(msgpack.packb(request(call_id=None)), "call_id", id="missing-field"),
        pytest.param(
            # Over the codec's envelope limit, yet under the calls stream's largest message.
            b"\x00" * (DEFAULT_MAX_PAYLOAD + ENVELOPE_OVERHEAD + 1024),
            "limit",
            id="oversized",
        ),
        pytest.param(
            msgpack.packb(request(deadline=float("nan"))), "not a time", id="nan-deadline"
        ),
        pytest.param(msgpack.packb(request(call_id="a b")), "call_id", id="bad-call-id"),
        pytest.param(
            msgpack.packb(request(resource_id="acc\n1")), "resource_id", id="bad-resource-id"
        ),
        pytest.param(
            msgpack.packb(request(resource_id="r" * 4100)), "at most", id="long-resource-id"
        ),
    ],
)
async def test_unusable_calls_get_an_error_reply_and_are_removed(
    raw: NATS, data: bytes, words: str
) -> None:
    reply = await send_raw(raw, data)
    assert reply is not None and reply.error is not None
    assert reply.error.code is ErrorCode.INVALID_ARGUMENT
    assert words in reply.error.message
    await eventually(lambda: stream_is_empty(raw))


async def test_calls_nobody_can_answer_are_dropped_and_the_router_keeps_serving(
    nats_server: NatsServerProcess, raw: NATS
) -> None:
    # No reply address anywhere, and a reply address that is not a subject.
    assert await send_raw(raw, b"\xc1", reply_header=False) is None
    bad_reply = CODEC.encode_envelope(
        CallRequest(
            call_id="raw-2",
            service="service_b",
            method="do_work",
            payload=b"",
            reply_to="not a subject",
        )
    )
    assert await send_raw(raw, bad_reply, reply_header=False) is None
    # An unreadable body whose reply header is not a subject either: dropped, not echoed
    # into the router's protocol stream.
    await raw.jetstream().publish(TARGET, b"\xc1", headers={REPLY_TO_HEADER: "x y\r\nPUB z"})
    await eventually(lambda: stream_is_empty(raw))
    await assert_a_good_call_is_answered(nats_server.url)


async def test_a_call_published_on_another_methods_subject_is_refused(raw: NATS) -> None:
    data = msgpack.packb(request(method="other"))
    reply = await send_raw(raw, data)
    assert reply is not None and reply.error is not None
    assert reply.error.code is ErrorCode.INVALID_ARGUMENT


async def test_an_expired_call_is_answered_deadline_exceeded_not_run(
    nats_server: NatsServerProcess, raw: NATS
) -> None:
    async with IPCClient(nats_server.url) as client:
        svc = CountingService()
        await client.serve(svc.service, instance_id="b1")
        reply = await send_raw(raw, msgpack.packb(request(deadline=1.0)))
    assert reply is not None and reply.error is not None
    assert reply.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert sum(svc.runs.values()) == 0


async def test_unknown_service_is_unavailable_and_unknown_method_not_found(
    nats_server: NatsServerProcess, raw: NATS
) -> None:
    reply = await send_raw(
        raw,
        msgpack.packb(request(service="nobody")),
        subject=SUBJECTS.call("nobody", "do_work", "raw"),
    )
    assert reply is not None and reply.error is not None
    assert reply.error.code is ErrorCode.UNAVAILABLE
    async with IPCClient(nats_server.url) as client:
        await client.serve(CountingService().service, instance_id="b1")
        reply = await send_raw(
            raw,
            msgpack.packb(request(method="nope")),
            subject=SUBJECTS.call("service_b", "nope", "raw"),
        )
    assert reply is not None and reply.error is not None
    assert reply.error.code is ErrorCode.NOT_FOUND


JUNK_CALLS = 2_000
LONG_REPLIES = 300
LONG = 60 * 1024


def junk(i: int) -> bytes:
    """Unreadable calls of several kinds; some echo 60 KB of input in their error."""
    match i % 4:
        case 0:
            return b"\xc1\x00garbage"
        case 1:
            return msgpack.packb({"v": "x" * LONG, "call_id": f"j{i}"})  # version echoed
        case 2:  # readable, refused in the reply (not logged): its call_id is too long
            return msgpack.packb(
                {
                    "v": 1,
                    "call_id": "c" * LONG,
                    "service": "service_b",
                    "method": "do_work",
                    "payload": b"",
                }
            )
        case _:
            return msgpack.packb([i])


async def test_a_flood_of_junk_calls_costs_kilobytes_of_log(
    nats_server: NatsServerProcess, router: RouterProcess, raw: NATS
) -> None:
    before = router.log_size()
    inbox = raw.new_inbox()
    for i in range(JUNK_CALLS):
        await raw.publish(TARGET, junk(i), headers={REPLY_TO_HEADER: inbox})
    long_reply = "r" * LONG
    for i in range(LONG_REPLIES):
        call = CallRequest(
            call_id=f"long-{i}",
            service="service_b",
            method="do_work",
            payload=b"",
            reply_to=long_reply,
        )
        await raw.publish(TARGET, CODEC.encode_envelope(call))
    await raw.flush()
    await eventually(lambda: stream_is_empty(raw), within=60)

    # The first of each kind at once; the rest counted in one line per kind at the
    # interval's end.
    async def summarized() -> None:
        assert router.log_since(before).count(b"more like it") >= 2

    await eventually(summarized, within=30)
    log = router.log_since(before).decode()
    lines = log.splitlines()
    unreadable = [line for line in lines if "unreadable call" in line]
    no_reply = [line for line in lines if "no usable reply address" in line]
    assert 1 <= len(unreadable) <= 3 and 1 <= len(no_reply) <= 3, log
    counted = sum(
        int(line.split(" more like it")[0].split()[-1].replace(",", ""))
        for line in lines
        if "more like it" in line
    )
    assert counted <= JUNK_CALLS + LONG_REPLIES - 2
    assert all(len(line) < 1_000 for line in lines), max(lines, key=len)[:300]
    assert len(log.encode()) < 8 * 1024, len(log)  # was 17.6 MB for the long replies alone
    assert "(61,440 characters)" in log

    await assert_a_good_call_is_answered(nats_server.url)  # and the router still answers


async def test_calls_queued_at_a_busy_instance_are_kept_alive_not_delivered_again(
    nats_server: NatsServerProcess, router: RouterProcess, raw: NATS
) -> None:
    """One call at a time on the instance, six sent at once, each 0.4 s: the last waits in
    the instance's queue for about two seconds, twice the router's ack_wait. The router
    keeps the calls it forwarded alive while their instance lives, so none is delivered
    (and forwarded) again, and each runs once."""
    svc = CountingService()
    forwarded: list[str] = []

    async def seen(msg: Msg) -> None:
        forwarded.append(msgpack.unpackb(msg.data)["call_id"])

    async with (
        IPCClient(nats_server.url, name="b") as server,
        IPCClient(nats_server.url, name="a") as caller,
    ):
        instance = await server.serve(svc.service, instance_id="b1", concurrency=1)
        await raw.subscribe(
            SUBJECTS.instance_inbox("service_b", "b1", instance._session), cb=seen  # noqa: SLF001
        )
        await raw.flush()
        placed = datetime.now(UTC)
        results = await asyncio.gather(
            *(
                caller.call(
                    "service_b.do_work",
                    WorkRequest(account="acc_1", amount=Decimal(i), placed_at=placed, delay_s=0.4),
                    returns=WorkResult,
                    timeout=20,
                )
                for i in range(6)
            )
        )
    await raw.flush()
    assert len({r.call_id for r in results}) == 6
    assert set(svc.runs.values()) == {1}
    assert sorted(forwarded) == sorted(r.call_id for r in results)  # each forwarded once


async def test_the_instances_view_counts_the_calls_forwarded_and_not_yet_reported(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    """A call runs on b1 for a while: ``ipc instances`` shows it in flight there (the router
    forwarded it and the instance has not reported it done), and none once it is."""
    svc = CountingService()
    async with (
        IPCClient(nats_server.url, name="b") as server,
        IPCClient(nats_server.url, name="a") as caller,
    ):
        await server.serve(svc.service, instance_id="b1")
        slow = WorkRequest(
            account="acc_1", amount=Decimal(1), placed_at=datetime.now(UTC), delay_s=1.5
        )
        running = asyncio.create_task(caller.call("service_b.do_work", slow, returns=WorkResult))

        async def inflight() -> int:
            (b1,) = await caller.admin.instances("service_b")
            return b1.inflight

        async def one_in_flight() -> None:
            assert await inflight() == 1

        await eventually(one_in_flight, within=5, retry_on=(AssertionError,))
        await running

        async def none_in_flight() -> None:
            assert await inflight() == 0

        await eventually(none_in_flight, within=5, retry_on=(AssertionError,))
