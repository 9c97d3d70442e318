"""Confused deputies: an attacker that may not publish somewhere gets a more privileged party
(the router, or JetStream itself) to publish there on its behalf; each attempt must fail.

The attacker is ``svc_x``, a legitimate service of the deployment, on a raw nats-py
connection (and serving instance ``x1`` of its own service through the SDK). The victims
are ``svc_a`` (a caller) and ``service_b`` (b1 active for acc_XYZ, b2 its standby). Each
case asserts what a victim sees.

- The router answers a call on the reply address its caller names: only ``_INBOX.``
  subjects, never a bucket's ``$KV`` subject it alone may write.
- The router trusts a heartbeat only on its own instance's subject, and answers it on that
  instance's control subject only.
- An instance takes nothing a JetStream push consumer delivered to its subjects (a consumer
  delivers wherever its creator says, past the creator's publish permissions), and never a
  lease longer than it registered with.

One stack serves every case (module scope), so the cases must leave it as they found it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from ipc_client_sdk import CallContext, IPCClient, Service, ServiceInstance
from ipc_client_sdk.protocol import (
    REPLY_TO_HEADER,
    AdminReply,
    CallRequest,
    Codec,
    Heartbeat,
    Subjects,
)
from ipc_testing import eventually, until
from ipc_testing.secured import SecuredStack
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

S = Subjects("ipc")
CODEC = Codec()
FORGED_AMOUNT = Decimal("999999.00")


@dataclass(eq=False)
class Deployment:
    stack: SecuredStack
    caller: IPCClient
    operator: IPCClient
    service: CountingService
    b1: ServiceInstance
    b2: ServiceInstance
    x1: ServiceInstance
    """The attacker's own instance (service ``svc_x``, method ``fake``)."""
    x: NATS
    """The attacker's raw connection."""
    fakes_run: list[str] = field(default_factory=list)
    """The call_ids ``svc_x.fake`` ran for."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    stack = SecuredStack.create(tmp_path_factory.mktemp("deputies"))
    await stack.start()
    try:
        async with (
            stack.client("service_b") as server,
            stack.client("svc_a") as caller,
            stack.client("operator") as operator,
            stack.client("svc_x", name="svc_x-server") as attacker_server,
        ):
            service = CountingService()
            b1 = await server.serve(service.service, instance_id="b1", resources=["acc_XYZ"])
            b2 = await server.serve(service.service, instance_id="b2", resources=["acc_XYZ"])
            fakes_run: list[str] = []
            fake = Service("svc_x")

            @fake.method("fake")
            async def forge(req: WorkRequest, ctx: CallContext) -> WorkResult:
                fakes_run.append(ctx.call_id)
                return _forged_result(ctx.call_id)

            x1 = await attacker_server.serve(fake, instance_id="x1")
            x = (await stack.raw("svc_x")).nc
            try:
                yield Deployment(stack, caller, operator, service, b1, b2, x1, x, fakes_run)
            finally:
                await x.close()
    finally:
        await stack.stop()


def _work() -> WorkRequest:
    return WorkRequest(account="acc_XYZ", amount=Decimal("100.25"), placed_at=datetime.now(UTC))


def _forged_result(call_id: str) -> WorkResult:
    return WorkResult(
        account="acc_XYZ",
        amount=FORGED_AMOUNT,
        placed_at=datetime.now(UTC),
        instance_id="b1",
        resource_id="acc_XYZ",
        call_id=call_id,
    )


async def _roles(d: Deployment) -> dict[str, str]:
    return {i.instance_id: i.role for i in await d.operator.admin.instances("service_b")}


async def _calls_consumer_done(d: Deployment, seq: int) -> None:
    """Wait until the router's calls consumer has taken (acked or refused) every message up
    to stream sequence ``seq``."""
    async with d.stack.client("router", name="inspector") as inspector:
        jsm = inspector._link.nats.jetstream()  # noqa: SLF001

        async def taken() -> None:
            (consumer,) = await jsm.consumers_info(S.calls_stream)
            assert consumer.delivered is not None and consumer.delivered.stream_seq >= seq
            assert consumer.num_ack_pending == 0

        await eventually(taken, within=10, retry_on=(AssertionError,))


async def test_f1_a_kv_reply_address_makes_the_router_write_nothing(
    deployment: Deployment,
) -> None:
    """svc_x calls its own service durably with reply addresses in the results bucket (the
    record of svc_a's next call) and the router lease: the router answers on neither; svc_a's
    call runs once on b1 and returns its own result; the router still leads."""
    d = deployment
    call_id = "ord-2001"
    record = f"service_b.do_work.svc_a.{call_id}"
    targets = {
        "xcall-results": f"$KV.{S.results_bucket}.{record}",
        "xcall-lease": f"$KV.{S.leases_bucket}.router-leader",
    }
    js = d.x.jetstream()
    seq = 0
    for forged_id, reply_to in targets.items():
        request = CallRequest(
            call_id=forged_id,
            service="svc_x",
            method="fake",
            payload=CODEC.encode(_work()),
            deadline=time.time() + 5,
            reply_to=reply_to,
        )
        ack = await js.publish(
            S.call("svc_x", "fake", "svc_x"),
            CODEC.encode_envelope(request),
            headers={"Nats-Msg-Id": forged_id, REPLY_TO_HEADER: reply_to},
        )
        seq = ack.seq
    await _calls_consumer_done(d, seq)
    assert "call xcall-results on ipc.call.svc_x.fake.svc_x has no usable reply address" in (
        d.stack.router.log_tail(200)
    )
    assert d.fakes_run == []  # dropped before it was routed
    result = await d.caller.call(
        "service_b.do_work",
        _work(),
        resource_id="acc_XYZ",
        returns=WorkResult,
        call_id=call_id,
        timeout=5,
    )
    assert result.amount == Decimal("100.25") and result.instance_id == "b1"
    assert d.service.runs[call_id] == 1
    async with d.stack.client("router", name="inspector") as inspector:
        kv = await inspector._link.nats.jetstream().key_value(S.results_bucket)  # noqa: SLF001

        async def recorded() -> list[KeyValue.Entry]:
            # The answer goes out just before the outcome is stored: wait for the outcome.
            history = await kv.history(record)
            assert history and not (history[-1].value or b"").startswith(b"\x00"), history
            return history

        history = await eventually(recorded, within=10, retry_on=(AssertionError, NoKeysError))
        assert all(str(FORGED_AMOUNT).encode() not in (e.value or b"") for e in history)
    assert (await d.operator.admin.status()).leader is True
    assert "stops routing" not in d.stack.router.log_tail(400)


async def test_f3_a_heartbeat_naming_another_instance_is_ignored(deployment: Deployment) -> None:
    """svc_x heartbeats as service_b.b1 (with b1's real session) on its own heartbeat
    subject, asking for the answer in its inbox: ignored, never answered."""
    d = deployment
    inbox = d.x.new_inbox()
    answers: list[Msg] = []

    async def on_answer(msg: Msg) -> None:
        answers.append(msg)

    await d.x.subscribe(inbox, cb=on_answer)
    beat = Heartbeat(
        service="service_b",
        instance_id="b1",
        sent_at=time.time(),
        role="active",
        epoch=d.b1.epoch,
        session=d.b1._session,  # noqa: SLF001  # no secret: the registry every service reads
        seq=10_000,
    )
    subject = S.heartbeat("svc_x", "x1")
    await d.x.publish(subject, CODEC.encode_envelope(beat), reply=inbox)
    await until(
        lambda: f"ignoring a heartbeat on {subject} that names service_b.b1"
        in d.stack.router.log_tail(200),
        within=5,
    )
    await d.x.flush()
    assert answers == []
    assert await _roles(d) == {"b1": "active", "b2": "standby"}


async def test_f3_a_heartbeat_is_answered_on_its_own_control_subject_only(
    deployment: Deployment,
) -> None:
    """svc_x heartbeats as its own x1, on x1's subject, with the reply pointing at b2's
    control subject (where svc_x may not publish): the router does not answer there, and
    b2 keeps its role and epoch."""
    d = deployment
    epoch, role = d.b2.epoch, d.b2.role
    b2_control = S.instance_control("service_b", "b2", d.b2._session)  # noqa: SLF001
    beat = Heartbeat(
        service="svc_x",
        instance_id="x1",
        sent_at=time.time(),
        role=d.x1.role,
        epoch=d.x1.epoch,
        session=d.x1._session,  # noqa: SLF001  # the attacker's own instance
        seq=10_000,
    )
    await d.x.publish(S.heartbeat("svc_x", "x1"), CODEC.encode_envelope(beat), reply=b2_control)
    await until(
        lambda: f"not answering a heartbeat of svc_x.x1 on {b2_control}"
        in d.stack.router.log_tail(200),
        within=5,
    )
    assert (d.b2.epoch, d.b2.role, d.b2.claimed) == (epoch, role, ())
    assert await _roles(d) == {"b1": "active", "b2": "standby"}


async def _push(d: Deployment, topic: str, bodies: list[bytes], deliver: str) -> ConsumerInfo:
    """Store ``bodies`` as events on ``topic`` and create a push consumer that delivers them
    to ``deliver``; its info once it delivered them all."""
    js = d.x.jetstream()
    stored = S.topic(topic)
    for body in bodies:
        await js.publish(stored, body)
    config = {
        "deliver_subject": deliver,
        "filter_subject": stored,
        "deliver_policy": "all",
        "ack_policy": "none",
        "inactive_threshold": 5_000_000_000,
    }
    stream = S.events_stream
    created = await d.x.request(
        f"$JS.API.CONSUMER.CREATE.{stream}",
        json.dumps({"stream_name": stream, "config": config}).encode(),
        timeout=5,
    )
    name = json.loads(created.data)["name"]  # JetStream takes it: the bypass is real

    async def delivered() -> ConsumerInfo:
        info: ConsumerInfo = await js.consumer_info(stream, name)
        assert info.delivered is not None and info.delivered.consumer_seq >= len(bodies)
        return info

    return await eventually(delivered, within=10, retry_on=(AssertionError,))


async def test_f5_state_injected_through_a_push_consumer_is_dropped(
    deployment: Deployment,
) -> None:
    """svc_x stores forged InstanceStates as events (lease 1e9 s for every heartbeat b1 sent
    or will send soon; then role active with a huge epoch) and has JetStream deliver them to
    b1's control subject: b1's role, epoch and lease are unchanged."""
    d = deployment
    epoch, role = d.b1.epoch, d.b1.role
    registered = d.b1._lease  # noqa: SLF001
    sent = list(d.b1._sent)  # noqa: SLF001
    seqs = range(min(sent), max(sent) + 64)
    bodies = [
        CODEC.encode_envelope(
            AdminReply(ok=True, result={"role": "active", "epoch": epoch, "seq": s, "lease": 1e9})
        )
        for s in seqs
    ]
    bodies.append(
        CODEC.encode_envelope(
            AdminReply(
                ok=True,
                result={"role": "standby", "epoch": 2**62, "owned": [], "draining": True},
            )
        )
    )
    control = S.instance_control("service_b", "b1", d.b1._session)  # noqa: SLF001
    await _push(d, "market.ticks", bodies, control)
    # The router's next answer on the same subscription comes after the injected ones.
    renewed = d.b1._lease_until  # noqa: SLF001
    await until(lambda: d.b1._lease_until > renewed, within=5)  # noqa: SLF001
    assert d.b1._lease_until - time.monotonic() <= registered  # noqa: SLF001
    assert (d.b1.epoch, d.b1.role) == (epoch, role)
    assert not d.b1.fenced and not d.b1.replaced
    assert await _roles(d) == {"b1": "active", "b2": "standby"}


async def test_f5_a_call_injected_through_a_push_consumer_never_runs(
    deployment: Deployment,
) -> None:
    """svc_x stores a forged call as an event and has JetStream deliver it to b1's call
    inbox: it never runs; svc_a's next call runs on b1 as usual."""
    d = deployment
    forged = CallRequest(
        call_id="injected-1",
        service="service_b",
        method="do_work",
        payload=CODEC.encode(_work()),
        resource_id="acc_XYZ",
        deadline=time.time() + 30,
        epoch=d.b1.epoch,
        direct=True,
    )
    inbox = S.instance_inbox("service_b", "b1", d.b1._session)  # noqa: SLF001
    await _push(d, "market.orders", [CODEC.encode_envelope(forged)], inbox)
    # A routed call reaches b1 on the same subscription, after the injected one.
    result = await d.caller.call(
        "service_b.do_work", _work(), resource_id="acc_XYZ", returns=WorkResult, timeout=5
    )
    assert result.instance_id == "b1"
    assert d.service.runs[result.call_id] == 1
    assert "injected-1" not in d.service.runs
