"""The forwarded durable call (issue 17) under attack: a real service identity of a
deployment written by ``ipc auth`` (``svc_x``, allowed to call every service) against the
router's forward and the instances' acks.

The router forwards a durable call to the instance inbox with the caller's reply address as
the NATS reply subject and the calls stream's ack subject in the body (``ack``,
``ack_wait``, ``router``, ``done``); the instance answers the caller and reports the end of
the call to the router (``<p>.done.<router token>.<service>.<verb>``, its own service's
only), which acks. No service may publish on the calls stream's ack subjects: there
``+NXT`` would pull other services' calls and ``+TERM`` drop them.

Each test shows a defence holding (the review that wrote them found four holes, closed
since: ``+NXT``/``+TERM`` and forged acks on the calls stream, answers aimed into another
identity's inbox, forged durations in heartbeat reports).

One stack serves every case (module scope), so the cases must leave it as they found it;
the case that leaves a pull request of the attacker's at the server runs last.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgpack
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from ipc_client_sdk import IPCClient, ServiceInstance
from ipc_client_sdk._acks import CallAcks
from ipc_client_sdk._link import Link
from ipc_client_sdk._tally import DURATION_BUCKETS, OTHER
from ipc_client_sdk._wire import Call
from ipc_client_sdk.protocol import CallReply, Codec, Subjects
from ipc_router.infrastructure.counters import RouterCounters
from ipc_testing import eventually, until
from ipc_testing.secured import RawConnection, SecuredStack
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

S = Subjects("ipc")
CODEC = Codec()
ACK_PREFIX = f"$JS.ACK.{S.calls_stream}.{S.calls_consumer}"


@dataclass(eq=False)
class Deployment:
    stack: SecuredStack
    caller: IPCClient
    b1: ServiceInstance
    b1_work: CountingService
    x1: ServiceInstance
    x1_work: CountingService
    attacker: RawConnection
    router: RawConnection


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    stack = SecuredStack.create(Path(tmp_path_factory.mktemp("forward-attacks")))
    await stack.start()
    try:
        async with (
            stack.client("service_b") as server,
            stack.client("svc_a") as caller,
            stack.client("svc_x") as own,
        ):
            b1_work = CountingService()
            b1 = await server.serve(b1_work.service, instance_id="b1", resources=["acc_XYZ"])
            x1_work = CountingService("svc_x")
            x1 = await own.serve(x1_work.service, instance_id="x1")
            attacker = await stack.raw("svc_x")
            router = await stack.raw("router")
            try:
                yield Deployment(stack, caller, b1, b1_work, x1, x1_work, attacker, router)
            finally:
                await attacker.nc.close()
                await router.nc.close()
    finally:
        await stack.stop()


@pytest.fixture
def d(deployment: Deployment) -> Deployment:
    """The module's deployment, by a short name."""
    return deployment


def _work(delay: float = 0.0) -> WorkRequest:
    return WorkRequest(
        account="acc_XYZ", amount=Decimal("100.25"), placed_at=datetime.now(UTC), delay_s=delay
    )


def _payload(delay: float = 0.0) -> bytes:
    return CODEC.encode(_work(delay))


def _body(service: str, reply_to: str, **fields: Any) -> dict[str, Any]:
    """A durable call's body to ``service.do_work`` as a raw client writes it."""
    body: dict[str, Any] = {
        "v": 1,
        "call_id": uuid.uuid4().hex,
        "service": service,
        "method": "do_work",
        "payload": _payload(),
        "deadline": time.time() + 5,
        "reply_to": reply_to,
    }
    if service == "service_b":
        body["resource_id"] = "acc_XYZ"
    return body | fields


async def _calls(d: Deployment, n: int, timeout: float) -> list[WorkResult | BaseException]:
    """``n`` durable calls of svc_a to service_b at once; their results or errors."""
    return await asyncio.gather(
        *(
            d.caller.call(
                "service_b.do_work",
                _work(),
                resource_id="acc_XYZ",
                returns=WorkResult,
                timeout=timeout,
            )
            for _ in range(n)
        ),
        return_exceptions=True,
    )


async def _publish_call(
    x: RawConnection, service: str, body: dict[str, Any], *, caller: str = "svc_x"
) -> int:
    """Publish a durable call as ``caller`` through JetStream; its stream sequence."""
    subject = S.call(service, body["method"], caller)
    ack = await x.nc.request(
        subject,
        msgpack.packb(body, use_bin_type=True),
        headers={"Nats-Msg-Id": f"{caller}.{body['call_id']}"},
        timeout=5,
    )
    answer = json.loads(ack.data)
    assert "seq" in answer, answer
    return int(answer["seq"])


async def _ack_pending(router: RawConnection) -> int:
    """Calls delivered by the calls consumer and not acked yet (read as the router)."""
    info = await router.nc.request(
        f"$JS.API.CONSUMER.INFO.{S.calls_stream}.{S.calls_consumer}", b"", timeout=5
    )
    return int(json.loads(info.data)["num_ack_pending"])


async def _stays_unacked(d: Deployment, seconds: float) -> None:
    """Watch for ``seconds`` that b1's running call stays un-acked while its handler runs."""
    watch_until = time.monotonic() + seconds
    while time.monotonic() < watch_until:
        assert d.b1.inflight > 0, "the handler must still run for the check to mean it"
        assert await _ack_pending(d.router) >= 1  # b1's call is still un-acked
        await asyncio.sleep(0.05)


async def _gone(router: RawConnection, seq: int) -> None:
    """Raises until the calls stream no longer holds message ``seq`` (read as the router)."""
    got = await router.nc.request(
        f"$JS.API.STREAM.MSG.GET.{S.calls_stream}", json.dumps({"seq": seq}).encode(), timeout=5
    )
    assert "error" in json.loads(got.data), "still in the stream"


async def _forged_call(d: Deployment, extra: dict[str, Any]) -> tuple[Msg, int, Msg]:
    """Publish, as svc_x to its own service, a call whose body forges every field the
    router sets; what the router forwarded to x1 (sniffed on the inbox, which svc_x may
    read), the call's stream sequence, and the answer that reached the reply address."""
    x = d.attacker
    session = d.x1._session  # noqa: SLF001  # no secret: the registry holds it
    forwarded = await x.sniff(S.instance_inbox("svc_x", "x1", session))
    reply_to = x.nc.new_inbox()
    answers = await x.sniff(reply_to)
    body = _body(
        "svc_x",
        reply_to,
        # Everything below is the router's to set.
        caller="svc_a",
        epoch=10**9,
        delivery=7,
        abandoned="x1",
        direct=True,
        ack=f"{ACK_PREFIX}.1.1.1.0.0",
        ack_wait=3600.0,
        router="evil",
        **extra,
    )
    seq = await _publish_call(x, "svc_x", body)
    await until(lambda: bool(forwarded) and bool(answers), within=5)
    return forwarded[0], seq, answers[0]


def _assert_router_fields(d: Deployment, msg: Msg, seq: int) -> None:
    """The forwarded body carries the router's values, never the caller's."""
    body = msgpack.unpackb(msg.data)
    tokens = body["ack"].split(".")
    assert body["ack"].startswith(f"{ACK_PREFIX}.")
    assert len(tokens) == 9 and tokens[5] == str(seq)  # this call's own stream message
    assert body["ack_wait"] == pytest.approx(1.0)  # the consumer's, not 3600
    assert body["router"] != "evil"
    assert body.get("abandoned") is None
    assert body["epoch"] == d.x1.epoch
    assert body["delivery"] == 1
    assert body["caller"] == "svc_x"
    assert body["direct"] is False


# --- forged fields in the caller's body -------------------------------------------------


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_forged_router_fields_are_replaced_on_the_fast_path(d: Deployment) -> None:
    """A well-formed first delivery (the fast path, ``forward_now``) whose body names
    another call's ack subject, a huge ack_wait, an abandoned instance, a future epoch,
    another caller and ``direct``: the instance gets the router's values only, runs the
    call once and answers the reply address."""
    msg, seq, answer = await _forged_call(d, {})
    _assert_router_fields(d, msg, seq)
    reply = CODEC.decode_envelope(answer.data, CallReply)
    assert reply.error is None
    assert d.x1_work.runs[reply.call_id] == 1


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_forged_router_fields_are_replaced_on_the_slow_path(d: Deployment) -> None:
    """The same forgery with a key the fast path does not know (so the router decodes the
    body with the model, the slow path): the same fields come out."""
    msg, seq, answer = await _forged_call(d, {"zz_unknown": 1})
    _assert_router_fields(d, msg, seq)
    assert "zz_unknown" not in msgpack.unpackb(msg.data)
    reply = CODEC.decode_envelope(answer.data, CallReply)
    assert reply.error is None
    assert d.x1_work.runs[reply.call_id] == 1


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_a_reply_address_outside_the_inbox_namespace_is_not_answered(
    d: Deployment,
) -> None:
    """A reply address that is not an ``_INBOX.`` subject (here the victim's results key,
    which service_b's instance could write with ``allow_responses``) is refused by both
    paths: nothing runs, nothing is written."""
    x = d.attacker
    call_id = uuid.uuid4().hex
    target = f"$KV.{S.results_bucket}.service_b.do_work.svc_a.{call_id}"
    body = _body("service_b", target, call_id=call_id)
    seq = await _publish_call(x, "service_b", body)
    # The router terminates it (no usable reply address): the stream lets it go unrun.
    await eventually(lambda: _gone(d.router, seq), within=5)
    assert d.b1_work.runs[call_id] == 0


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_a_reply_address_must_be_the_callers_own_inbox(d: Deployment) -> None:
    """svc_x calls service_b with a reply address inside svc_a's inbox prefix (which only
    svc_a may read). Nothing may arrive there: the router (``--auth-dir``: it knows each
    identity's inbox prefix) drops the call unrun; a call's answer goes to its caller
    only."""
    x = d.attacker
    victim = await d.stack.raw("svc_a")
    try:
        key = d.stack.auth.load().identity("svc_a").public_key  # type: ignore[union-attr]
        planted = f"_INBOX.{key}.planted"
        landed = await victim.sniff(planted)
        seq = await _publish_call(x, "service_b", _body("service_b", planted))
        await eventually(lambda: _gone(d.router, seq), within=5)  # terminated, unrun
        await victim.nc.flush()
        assert landed == []
    finally:
        await victim.nc.close()


# --- acks of other services' calls ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_a_service_cannot_ack_another_services_call(d: Deployment) -> None:
    """svc_a's call runs for a while on b1; svc_x sweeps acks over the stream's sequence
    numbers (consecutive; its own call's publish ack says where the stream is). The call
    must stay un-acked until b1 has stored its outcome."""
    x = d.attacker
    running = asyncio.create_task(
        d.caller.call(
            "service_b.do_work",
            _work(1.5),
            resource_id="acc_XYZ",
            returns=WorkResult,
            timeout=10,
        )
    )
    try:
        await until(lambda: sum(d.b1_work.runs.values()) > 0 and d.b1.inflight > 0, within=5)
        pending_before = await _ack_pending(d.router)
        assert pending_before >= 1
        probe = _body("svc_x", x.nc.new_inbox())
        last = await _publish_call(x, "svc_x", probe)  # where the stream is now
        for seq in range(1, last):
            await x.nc.publish(f"{ACK_PREFIX}.1.{seq}.{seq}.0.0", b"")
        await x.nc.flush()
        # The consumer takes acks off its own queue: watch for a while.
        await _stays_unacked(d, 0.5)
    finally:
        result = await running
    assert result.call_id


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_a_service_cannot_report_another_services_call_done(d: Deployment) -> None:
    """svc_x learns a router's report subject from a call forwarded to its own instance,
    then reports service_b's running call done: under its own service's name (which NATS
    lets it publish) the router ignores it, as a call it did not forward to svc_x; under
    service_b's name NATS refuses it. The call stays un-acked until b1 reports."""
    x = d.attacker
    forwarded = await x.sniff(S.instance_inbox("svc_x", "x1", d.x1._session))  # noqa: SLF001
    await _publish_call(x, "svc_x", _body("svc_x", x.nc.new_inbox()))
    await until(lambda: bool(forwarded), within=5)
    done = msgpack.unpackb(forwarded[0].data)["done"]
    sniffed = await d.router.sniff(
        S.instance_inbox("service_b", "b1", d.b1._session)
    )  # noqa: SLF001
    running = asyncio.create_task(
        d.caller.call(
            "service_b.do_work", _work(1.0), resource_id="acc_XYZ", returns=WorkResult, timeout=10
        )
    )
    try:
        await until(lambda: bool(sniffed) and d.b1.inflight > 0, within=5)
        ack = msgpack.unpackb(sniffed[-1].data)["ack"]
        await x.nc.publish(f"{done}.svc_x.ack", ack.encode())
        await x.nc.publish(f"{done}.service_b.ack", ack.encode())
        await x.nc.flush()
        await x.refused(f"{done}.service_b.ack")
        await _stays_unacked(d, 0.4)
    finally:
        result = await running
    assert result.call_id


# --- forged call counts in heartbeats (the leader's counters) ----------------------------


def _report(
    outcomes: dict[str, int], counts: list[int], seconds: float
) -> tuple[dict[str, int], list[int], float]:
    return outcomes, counts, seconds


def _counts(n: int) -> list[int]:
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    counts[0] = n
    return counts


class _Knows:
    """A router state that knows service_b.do_work only."""

    def knows(self, service: str, method: str) -> bool:
        return (service, method) == ("service_b", "do_work")


def _counters() -> RouterCounters:
    counters = RouterCounters()
    counters.state = cast(Any, _Knows())
    return counters


def test_forged_reports_that_do_not_add_up_are_dropped() -> None:
    """Negative counts, counts that disagree with the buckets, a wrong bucket count, a
    non-finite or negative duration: dropped, nothing counted."""
    counters = _counters()
    counters.calls_reported(
        "service_b",
        {
            "do_work": _report({"ok": -5}, _counts(-5), 0.0),
        },
    )
    for bad in (
        _report({"ok": 3}, _counts(2), 0.1),
        _report({"ok": 1}, [1], 0.1),
        _report({"ok": 1}, _counts(1), math.inf),
        _report({"ok": 1}, _counts(1), -1.0),
        _report({"ok": 2 * 10**9}, _counts(2 * 10**9), 0.0),
    ):
        counters.calls_reported("service_b", {"do_work": bad})
    assert counters.call_counts() == []


def test_forged_method_and_outcome_names_do_not_grow_labels() -> None:
    """A heartbeat naming thousands of methods the service never registered, and outcomes
    that are not error codes: all of it counts under ``_other``, so label cardinality stays
    bounded."""
    counters = _counters()
    forged = {f"m{i}": _report({f"x{i}": 1}, _counts(1), 0.0) for i in range(2000)}
    forged["do_work"] = _report({"ok": 1, "made_up": 1}, _counts(2), 0.0)
    counters.calls_reported("service_b", forged)
    labels = {(c.service, c.method) for c in counters.call_counts()}
    assert labels == {("service_b", "do_work"), (OTHER, OTHER)}
    outcomes = {o for c in counters.call_counts() for o in c.outcomes}
    assert outcomes <= {"ok", "other"}


def test_a_forged_duration_cannot_poison_a_series_sum() -> None:
    """Each reported call took at most the longest call the router allows (an hour); a
    report claiming more is not believed (dropped whole)."""
    counters = _counters()
    for _ in range(2):
        counters.calls_reported("service_b", {"do_work": _report({"ok": 1}, _counts(1), 1e308)})
    assert counters.call_counts() == []  # dropped, so the sum stays finite
    counters.calls_reported("service_b", {"do_work": _report({"ok": 2}, _counts(2), 7200.0)})
    (calls,) = counters.call_counts()
    assert math.isfinite(calls.seconds) and calls.seconds == 7200.0


# --- the instance's own check of the ack subject ------------------------------------------


def test_an_instance_reports_only_on_its_calls_stream() -> None:
    """Defence in depth (only routers publish on an instance's inbox): an ``ack`` that is
    not an ack subject of this deployment's calls stream, or a ``done`` that is not a
    router's report subject, is never reported on."""
    link = cast(Link, SimpleNamespace(subjects=S))
    acks = CallAcks(link, "service_b")

    def call(ack: str, done: str = f"{S.prefix}.done.abc123") -> Call:
        return Call("c1", "service_b", "do_work", b"", ack=ack, done=done)

    good = f"{ACK_PREFIX}.1.5.5.0.0"
    assert acks.subject_of(call(good)) == good
    for bad_done in ("ipc.ctl.deregister", f"{S.prefix}.done.a.b", "_INBOX.x"):
        assert acks.subject_of(call(good, bad_done)) is None, bad_done
    for bad in (
        f"$JS.ACK.{S.events_stream}.durable.1.5.5.0.0",
        f"$KV.{S.results_bucket}.service_b.do_work.svc_a.c1",
        "ipc.ctl.deregister.service_b",
        f"$JS.ACK.{S.calls_stream}",
        "_INBOX.x.y",
    ):
        assert acks.subject_of(call(bad)) is None, bad


# --- reading other callers' calls (runs last: it leaves a pull request behind) -----------


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_zz_a_service_cannot_pull_other_callers_calls(d: Deployment) -> None:
    """svc_x sends ``+NXT`` (ack, and deliver the next calls to my reply subject) to an ack
    subject of the calls consumer; svc_a then makes calls to service_b. None of them may
    reach svc_x, and every one is answered."""
    x = d.attacker
    stolen_to = x.nc.new_inbox()
    stolen = await x.sniff(stolen_to)
    pull = json.dumps({"batch": 64, "expires": 2_000_000_000}).encode()
    await x.nc.publish(f"{ACK_PREFIX}.1.1.1.0.0", b"+NXT " + pull, reply=stolen_to)
    await x.nc.flush()
    results = await _calls(d, 20, timeout=10)
    # The stolen ones come back after ack_wait and are answered.
    assert all(isinstance(r, WorkResult) for r in results)
    assert [m.subject for m in stolen] == []


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_zzz_a_service_cannot_make_accepted_calls_vanish(d: Deployment) -> None:
    """The same pull, with every call it brings terminated at once: every call svc_a makes
    must still be answered (an accepted call is never lost)."""
    x = d.attacker
    thief_to = x.nc.new_inbox()

    async def terminate(msg: Msg) -> None:
        if msg.reply:
            await x.nc.publish(msg.reply, b"+TERM")

    await x.nc.subscribe(thief_to, cb=terminate)
    pull = json.dumps({"batch": 64, "expires": 3_000_000_000}).encode()
    await x.nc.publish(f"{ACK_PREFIX}.1.1.1.0.0", b"+NXT " + pull, reply=thief_to)
    await x.nc.flush()
    outcomes = await _calls(d, 30, timeout=3)  # the server deals calls out among the pulls
    failures = [type(o).__name__ for o in outcomes if isinstance(o, BaseException)]
    assert failures == []
