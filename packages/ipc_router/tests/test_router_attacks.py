"""The attack matrix: each attack of issue 13, run against a deployment configured by
``ipc auth`` with the identity a real attacker holds, must be refused observably.

The attacker is ``svc_x``: a legitimate service of the same deployment (its own NKey, allowed
to call every service), using a raw nats-py connection so that no SDK check stands in the
way; and a client with no credentials at all. The victims are ``svc_a`` (a caller) and
``service_b`` (instances b1, active for acc_XYZ, and b2, its standby). Every case asserts
what a victim sees (the caller's answer, the instance's role, the lease holder, the stream's
contents), and that NATS reported the violation to the attacker.

One stack serves every case (module scope), so the cases must leave it as they found it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgpack
import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio

from ipc_client_sdk import (
    AuthenticationError,
    Credentials,
    IPCClient,
    PermissionDeniedError,
    ServiceInstance,
)
from ipc_client_sdk.protocol import (
    REFUSED_HEADER,
    AdminOp,
    AdminReply,
    AdminRequest,
    CallReply,
    CallRequest,
    Codec,
    ErrorCode,
    ErrorInfo,
    Subjects,
)
from ipc_testing import until
from ipc_testing.secured import DENIED, SecuredStack
from ipc_testing.secured import RawConnection as Attacker
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

S = Subjects("ipc")
CODEC = Codec()


@dataclass(eq=False)
class Deployment:
    stack: SecuredStack
    caller: IPCClient
    operator: IPCClient
    b1: ServiceInstance
    b2: ServiceInstance
    attacker: Attacker
    b2_work: CountingService


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    stack = SecuredStack.create(tmp_path_factory.mktemp("attacks"))
    await stack.start()
    try:
        async with (
            stack.client("service_b") as server,
            stack.client("svc_a") as caller,
            stack.client("operator") as operator,
        ):
            b1 = await server.serve(
                CountingService().service, instance_id="b1", resources=["acc_XYZ"]
            )
            b2_work = CountingService()
            b2 = await server.serve(b2_work.service, instance_id="b2", resources=["acc_XYZ"])
            attacker = await stack.raw("svc_x")
            try:
                yield Deployment(stack, caller, operator, b1, b2, attacker, b2_work)
            finally:
                await attacker.nc.close()
    finally:
        await stack.stop()


def _work(delay: float = 0.0) -> WorkRequest:
    return WorkRequest(
        account="acc_XYZ", amount=Decimal("100.25"), placed_at=datetime.now(UTC), delay_s=delay
    )


async def _call(d: Deployment, *, delay: float = 0.0, durable: bool = True) -> WorkResult:
    return await d.caller.call(
        "service_b.do_work",
        _work(delay),
        resource_id="acc_XYZ",
        returns=WorkResult,
        durable=durable,
        timeout=5,
    )


async def _roles(d: Deployment) -> dict[str, str]:
    return {i.instance_id: i.role for i in await d.operator.admin.instances("service_b")}


def _admin(op: str, args: Mapping[str, object]) -> bytes:
    return CODEC.encode_envelope(AdminRequest(op=op, args=dict(args)))


async def test_anonymous_clients_are_refused_at_connect(deployment: Deployment) -> None:
    """(all attacks, no credentials) nothing is anonymous: the connection itself fails."""
    with pytest.raises(AuthenticationError):
        async with IPCClient(deployment.stack.url, credentials=Credentials()):
            pass
    with pytest.raises(AuthenticationError):  # a known service name buys nothing either
        async with IPCClient(
            deployment.stack.url,
            name="service_b",
            credentials=Credentials(user="service_b", password="x"),
        ):
            pass


async def test_a_registering_as_another_service_is_refused(deployment: Deployment) -> None:
    """(a) svc_x registers as an instance of service_b claiming acc_XYZ: refused three ways;
    the caller's answer still comes from service_b's own instance."""
    d, x = deployment, deployment.attacker
    registration = {
        "service": "service_b",
        "instance_id": "evil",
        "methods": ["do_work"],
        "resources": ["acc_XYZ"],
        "session": "s1",
    }
    # On service_b's subject: NATS drops it.
    assert (
        await x.request(S.control(AdminOp.REGISTER, "service_b"), _admin("register", registration))
        is None
    )
    await x.refused(S.control(AdminOp.REGISTER, "service_b"))
    # On the old, unscoped subject: NATS drops it.
    assert await x.request(f"{S.prefix}.ctl.register", _admin("register", registration)) is None
    # On its own subject, naming service_b: the router refuses it.
    answer = await x.request(S.control(AdminOp.REGISTER, "svc_x"), _admin("register", registration))
    assert answer is not None
    reply = CODEC.decode_envelope(answer.data, AdminReply)
    assert not reply.ok and reply.error is not None
    assert reply.error.code is ErrorCode.PERMISSION_DENIED
    # And it could not receive service_b's calls anyway.
    await x.sniff(S.instance_inbox("service_b", "evil", "s1"))
    await x.refused(S.instance_inbox("service_b", "evil", "s1"))
    assert await _roles(d) == {"b1": "active", "b2": "standby"}
    result = await _call(d)
    assert result.instance_id == "b1"


async def test_b_sniffing_calls_and_inboxes_receives_nothing(deployment: Deployment) -> None:
    """(b) svc_x subscribes to every call, to b1's inbox, to every inbox and to svc_a's
    inbox: NATS refuses each subscription and none receives a message while calls flow."""
    d, x = deployment, deployment.attacker
    caller_inbox = f"_INBOX.{d.stack.auth.load().identity('svc_a').public_key}.>"  # type: ignore[union-attr]
    subjects = [S.calls_all, f"{S.prefix}.inst.service_b.>", "_INBOX.>", caller_inbox, ">"]
    sniffed = [await x.sniff(s) for s in subjects]
    for subject in subjects:
        await x.refused(subject)
    assert (await _call(d, durable=True)).instance_id == "b1"
    assert (await _call(d, durable=False)).instance_id == "b1"
    assert all(not got for got in sniffed), [len(g) for g in sniffed]


async def test_b_a_forged_reply_never_reaches_the_caller(deployment: Deployment) -> None:
    """(b) svc_x publishes forged results to the caller's reply subjects while a call runs
    (it is granted the exact subjects): NATS drops them; the caller gets b1's result."""
    d, x = deployment, deployment.attacker
    prefix = d.caller._link.replies._prefix  # noqa: SLF001  # the attacker knows the subject
    forged = msgpack.packb({"v": 1, "call_id": "x", "payload": b"forged"})
    call = asyncio.create_task(_call(d, delay=0.5))
    await until(lambda: d.b1.inflight > 0, within=5)
    for token in range(1, 400):
        await x.nc.publish(f"{prefix}{token:x}", forged)
    await x.refused("_INBOX.")
    result = await call
    assert result.instance_id == "b1" and result.amount == Decimal("100.25")


async def test_c_operator_operations_from_a_service_are_refused(deployment: Deployment) -> None:
    """(c) svc_x promotes b2, drains b1, deregisters b1 (with and without a session): no
    role changes."""
    d, x = deployment, deployment.attacker
    session = (
        d.b1._session
    )  # noqa: SLF001  # no secret: the registry every service watches holds it
    attempts = {
        S.admin(AdminOp.PROMOTE): _admin("promote", {"service": "service_b", "instance_id": "b2"}),
        S.admin(AdminOp.DRAIN): _admin("drain", {"service": "service_b", "instance_id": "b1"}),
        S.control(AdminOp.PROMOTE): _admin(
            "promote", {"service": "service_b", "instance_id": "b2"}
        ),
        S.control(AdminOp.DEREGISTER): _admin(
            "deregister", {"service": "service_b", "instance_id": "b1"}
        ),
        S.control(AdminOp.DEREGISTER, "service_b"): _admin(
            "deregister", {"service": "service_b", "instance_id": "b1", "session": session}
        ),
        S.control(AdminOp.DRAIN, "service_b"): _admin(
            "drain", {"service": "service_b", "instance_id": "b1", "timeout": 1}
        ),
    }
    for subject, data in attempts.items():
        assert await x.request(subject, data) is None, subject
        await x.refused(subject)
    # Through its own control subject, naming service_b: the router refuses it.
    own = await x.request(
        S.control(AdminOp.DEREGISTER, "svc_x"),
        _admin("deregister", {"service": "service_b", "instance_id": "b1", "session": session}),
    )
    assert own is not None
    assert CODEC.decode_envelope(own.data, AdminReply).error.code is ErrorCode.PERMISSION_DENIED  # type: ignore[union-attr]
    # The SDK's admin client under svc_x's identity is told at once that NATS refused it.
    async with d.stack.client("svc_x", request_timeout=DENIED) as sdk:
        with pytest.raises(PermissionDeniedError) as refused:
            await sdk.admin.promote("service_b", "b2")
        assert refused.value.subject == S.admin(AdminOp.PROMOTE)
    assert await _roles(d) == {"b1": "active", "b2": "standby"}
    assert d.b1.role == "active" and not d.b1.replaced
    assert (await _call(d)).instance_id == "b1"


async def test_d_a_forged_control_message_cannot_silence_an_instance(
    deployment: Deployment,
) -> None:
    """(d) svc_x publishes FAILED_PRECONDITION on b1's control subject: NATS drops it; b1
    keeps serving and heartbeating."""
    d, x = deployment, deployment.attacker
    control = S.instance_control("service_b", "b1", d.b1._session)  # noqa: SLF001
    forged = AdminReply(
        ok=False,
        error=ErrorInfo(code=ErrorCode.FAILED_PRECONDITION, message="taken over"),
    )
    await x.nc.publish(control, CODEC.encode_envelope(forged))
    await x.refused(control)
    beats = {i.instance_id: i for i in await d.operator.admin.instances("service_b")}
    assert not d.b1.replaced and d.b1.role == "active"
    assert beats["b1"].health == "healthy"
    assert (await _call(d)).instance_id == "b1"


async def test_f4_a_call_forged_as_routed_never_runs_on_the_standby(
    deployment: Deployment,
) -> None:
    """(F4) svc_x, allowed to send service_b direct calls, sends b2 (acc_XYZ's standby) a
    call that claims to come from the router (``direct=False``, no epoch): on b2's inbox
    NATS drops it; on b2's direct subject b2 goes by the subject, takes it for a direct
    call and refuses it unrun. Nothing runs on b2."""
    d, x = deployment, deployment.attacker
    session = d.b2._session  # noqa: SLF001  # no secret: the registry holds it
    runs = sum(d.b2_work.runs.values())

    def forged(call_id: str, epoch: int | None) -> bytes:
        request = CallRequest(
            call_id=call_id,
            service="service_b",
            method="do_work",
            payload=CODEC.encode(_work()),
            resource_id="acc_XYZ",
            deadline=time.time() + 5,
            caller="svc_a",
            epoch=epoch,
            direct=False,
        )
        return CODEC.encode_envelope(request)

    inbox = S.instance_inbox("service_b", "b2", session)
    assert await x.request(inbox, forged("forged-routed-1", None)) is None
    await x.refused(inbox)
    direct = S.instance_direct("service_b", "b2", session)
    for call_id, epoch, reason in (
        ("forged-routed-2", None, "stale-epoch"),
        ("forged-routed-3", d.b2.epoch, "not-owner"),
    ):
        answer = await x.request(direct, forged(call_id, epoch))
        assert answer is not None and (answer.headers or {}).get(REFUSED_HEADER) == reason
        reply = CODEC.decode_envelope(answer.data, CallReply)
        assert reply.error is not None and reply.error.code is ErrorCode.FAILED_PRECONDITION
    assert sum(d.b2_work.runs.values()) == runs
    assert await _roles(d) == {"b1": "active", "b2": "standby"}
    assert (await _call(d)).instance_id == "b1"


async def test_e_writing_the_router_lease_is_refused(deployment: Deployment) -> None:
    """(e) svc_x publishes on the leader lease key: NATS drops it; the router still leads."""
    d, x = deployment, deployment.attacker
    subject = f"$KV.{S.leases_bucket}.router-leader"
    await x.nc.publish(subject, b"svc_x")
    await x.refused(subject)
    await x.nc.publish(subject, b"", headers={"KV-Operation": "PURGE"})
    js = x.nc.jetstream(timeout=DENIED)
    with pytest.raises(nats.errors.TimeoutError):
        await js.key_value(S.leases_bucket)
    status = await d.operator.admin.status()
    assert status.leader is True
    assert (await _call(d)).instance_id == "b1"
    assert "step" not in d.stack.router.log_tail(200).lower()


async def test_f_another_services_results_are_out_of_reach(deployment: Deployment) -> None:
    """(f) svc_x reads and overwrites service_b's recorded result: both refused; the record
    and the caller's retry stay b1's."""
    d, x = deployment, deployment.attacker
    first = await _call(d)
    key = f"service_b.do_work.svc_a.{first.call_id}"
    bucket = S.results_bucket
    await x.nc.publish(f"$KV.{bucket}.{key}", b"forged")
    await x.refused(f"$KV.{bucket}.{key}")
    direct = f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}"
    assert await x.request(direct, b"") is None
    await x.refused(direct)
    msg_get = f"$JS.API.STREAM.MSG.GET.KV_{bucket}"
    body = json.dumps({"last_by_subj": f"$KV.{bucket}.{key}"}).encode()
    assert await x.request(msg_get, body) is None
    await x.refused(msg_get)
    again = await d.caller.call(
        "service_b.do_work",
        _work(),
        resource_id="acc_XYZ",
        returns=WorkResult,
        call_id=first.call_id,
        timeout=5,
    )
    assert again == first


async def test_g_jetstream_api_abuse_is_refused(deployment: Deployment) -> None:
    """(g) svc_x deletes and purges the calls stream, and reads the calls stream and the
    results bucket through consumers of its own: each refused, nothing changed."""
    d, x = deployment, deployment.attacker
    api = "$JS.API"
    attempts = [
        f"{api}.STREAM.DELETE.{S.calls_stream}",
        f"{api}.STREAM.PURGE.{S.calls_stream}",
        f"{api}.STREAM.DELETE.KV_{S.leases_bucket}",
        f"{api}.STREAM.UPDATE.{S.calls_stream}",
        f"{api}.CONSUMER.CREATE.{S.calls_stream}",
        f"{api}.CONSUMER.CREATE.{S.calls_stream}.spy.{S.calls_all}",
        f"{api}.CONSUMER.DURABLE.CREATE.{S.calls_stream}.spy",
        f"{api}.CONSUMER.CREATE.KV_{S.results_bucket}",
        f"{api}.STREAM.INFO.{S.calls_stream}",
    ]
    for subject in attempts:
        assert await x.request(subject, b"{}") is None, subject
        await x.refused(subject)
    async with d.stack.client("router", name="inspector") as inspector:
        js = inspector._link.nats.jetstream()  # noqa: SLF001
        calls = await js.stream_info(S.calls_stream)
        assert calls.state.consumer_count == 1  # the routers' own
        assert (await js.stream_info(f"KV_{S.results_bucket}")).state.consumer_count == 0
        await js.stream_info(f"KV_{S.leases_bucket}")
    assert (await _call(d)).instance_id == "b1"


async def test_no_violation_on_the_legitimate_side(deployment: Deployment, tmp_path: Path) -> None:
    """The victims' own traffic met no refusal: every violation was the attacker's."""
    d = deployment
    log = d.stack.router.log_tail(400)
    assert "refused an operation" not in log, log
