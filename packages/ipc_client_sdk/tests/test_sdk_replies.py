"""``ReplyInbox`` against a real nats-server: a "no responders" status on a reply subject.

nats-server tells a requester that nobody listens with a message of no data whose header
block is the status line ``NATS/1.0 503``. ``request`` raises it as nats-py does; a wait that
asks for it (a durable call's answer) passes over it and takes the real answer after it.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ipc_client_sdk import IPCClient, Service
from ipc_client_sdk.protocol import REPLY_TO_HEADER, ReplyInbox
from ipc_router.infrastructure.nats_server import NatsServerProcess

_STATUS_503 = b"NATS/1.0 503\r\n\r\n"


async def send_no_responders(url: str, subject: str) -> None:
    """Publish to ``subject`` the message nats-server sends a requester nobody answers,
    byte for byte, from a connection of its own; return once the server has taken it (its
    PONG), so that it is queued to the subscribers before anything published later."""
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        await reader.readline()  # INFO
        size = len(_STATUS_503)
        writer.write(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n'
            + b"HPUB %s %d %d\r\n%s\r\nPING\r\n" % (subject.encode(), size, size, _STATUS_503)
        )
        await writer.drain()
        while not (await reader.readline()).startswith(b"PONG"):
            pass
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_patient_wait_passes_over_no_responders_and_takes_the_answer(
    nats_server: NatsServerProcess, raw_nats: NATS
) -> None:
    inbox = ReplyInbox(raw_nats)
    try:
        reply_to, patient = await inbox.expect(ignore_no_responders=True)
        other_reply, plain = await inbox.expect()
        await send_no_responders(nats_server.url, reply_to)
        await send_no_responders(nats_server.url, other_reply)
        # One subscription takes its messages in order: once the second status has
        # completed the plain wait, the first one has been seen and passed over.
        status = await asyncio.wait_for(plain, 5)
        assert status.data == b"" and status.headers == {"Status": "503"}
        assert not patient.done()
        await raw_nats.publish(reply_to, b"the answer")
        answer = await asyncio.wait_for(patient, 5)
        assert answer.data == b"the answer"
        inbox.forget(reply_to)
        inbox.forget(other_reply)
        # A request still fails at once when nobody listens.
        with pytest.raises(nats.errors.NoRespondersError):
            await inbox.request("nobody.listens.here", b"x", timeout=5)
    finally:
        await inbox.close()


async def test_a_durable_call_waits_past_no_responders_for_its_answer(
    nats_server: NatsServerProcess, raw_nats: NATS, clients: tuple[IPCClient, IPCClient]
) -> None:
    caller, server = clients
    released = asyncio.Event()
    runs = 0
    svc = Service("patient")

    @svc.method("wait")
    async def wait(req: int) -> int:
        nonlocal runs
        runs += 1
        await released.wait()
        return req + 1

    await server.serve(svc, instance_id="p1")
    calls = await raw_nats.subscribe("ipc.call.patient.wait.>")
    await raw_nats.flush()
    pending = asyncio.create_task(caller.call("patient.wait", 41, timeout=10, returns=int))
    sent = await calls.next_msg(timeout=5)
    assert sent.headers is not None
    # What nats-server sends when a call forwarded with the caller's reply address finds
    # its instance gone: the call's answer is still to come (JetStream redelivers it).
    await send_no_responders(nats_server.url, sent.headers[REPLY_TO_HEADER])
    released.set()
    assert await pending == 42
    assert runs == 1


async def test_waits_time_out_on_time_and_answered_ones_leave_no_deadline(
    raw_nats: NATS,
) -> None:
    inbox = ReplyInbox(raw_nats)
    silent = await raw_nats.subscribe("silent")

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await raw_nats.subscribe("echo", cb=echo)
    try:
        answers = await asyncio.gather(
            *(inbox.request("echo", b"%d" % i, timeout=5) for i in range(200))
        )
        assert [a.data for a in answers] == [b"%d" % i for i in range(200)]
        assert inbox._deadlines._groups == {}  # nothing kept for the answered ones
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(nats.errors.TimeoutError):
            await inbox.request("silent", b"x", timeout=0.2)
        assert 0.2 <= loop.time() - started < 2
        assert inbox._deadlines._groups == {}
    finally:
        await silent.unsubscribe()
        await inbox.close()
