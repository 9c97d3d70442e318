"""The direct path (``durable=False``): straight to the instance, at most once, fenced."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ipc_client_sdk import (
    CallContext,
    InvalidArgumentError,
    IPCClient,
    RemoteError,
    Service,
    ServiceUnavailableError,
    _serving,
)
from ipc_client_sdk.protocol import (
    REFUSED_HEADER,
    CallReply,
    CallRequest,
    Codec,
    ErrorCode,
    Registration,
    Subjects,
)
from ipc_testing.waiting import until
from ipc_testing.workload import CountingService, WorkRequest, WorkResult


def work(account: str = "acc_1") -> WorkRequest:
    return WorkRequest(account=account, amount=Decimal("0.10"), placed_at=datetime.now(UTC))


async def recorded(nc: NATS, key: str) -> bool:
    """Whether the results bucket holds a claim or an outcome for ``key``."""
    kv = await nc.jetstream().key_value(Subjects().results_bucket)
    try:
        await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return False
    return True


async def send(
    nc: NATS,
    instance: object,
    epoch: int | None,
    resource: str | None,
    *,
    direct: bool = True,
    to_inbox: bool = False,
) -> tuple[str, CallReply]:
    """A raw direct call to the instance; the refusal reason (empty: run) and the reply.

    ``direct``: the body's flag; ``to_inbox``: send it to the router's subject instead.
    """
    codec = Codec()
    session = instance._session  # type: ignore[attr-defined]
    instance_id = instance.instance_id  # type: ignore[attr-defined]
    request = CallRequest(
        call_id=f"raw-{epoch}-{resource}-{instance_id}",
        service="service_b",
        method="do_work",
        payload=codec.encode(work()),
        resource_id=resource,
        deadline=time.time() + 5,
        caller="raw",  # on the inbox, as the router sets it from the call's subject
        epoch=epoch,
        direct=direct,
    )
    subjects = Subjects()
    where = subjects.instance_inbox if to_inbox else subjects.instance_direct
    subject = where("service_b", instance_id, session)
    msg = await nc.request(subject, codec.encode_envelope(request), timeout=5)
    reply = codec.decode_envelope(msg.data, CallReply)
    return (msg.headers or {}).get(REFUSED_HEADER, ""), reply


async def test_direct_call_is_answered_by_the_owner_and_not_recorded(
    clients: tuple[IPCClient, IPCClient], raw_nats: NATS
) -> None:
    caller, server = clients
    svc = CountingService()
    await server.serve(svc.service, instance_id="b1", resources=["acc_1"])
    direct = await caller.call(
        "service_b.do_work", work(), resource_id="acc_1", returns=WorkResult, durable=False
    )
    assert (direct.instance_id, direct.amount) == ("b1", Decimal("0.10"))
    assert not await recorded(raw_nats, f"service_b.do_work.svc_a.{direct.call_id}")
    durable = await caller.call(
        "service_b.do_work", work(), resource_id="acc_1", returns=WorkResult, durable=True
    )
    assert await recorded(raw_nats, f"service_b.do_work.svc_a.{durable.call_id}")
    assert svc.runs[direct.call_id] == svc.runs[durable.call_id] == 1


async def test_a_method_declared_not_durable_goes_direct_unless_asked(
    clients: tuple[IPCClient, IPCClient], raw_nats: NATS
) -> None:
    caller, server = clients
    svc = Service("quotes")

    @svc.method("quote", durable=False)
    async def quote(symbol: str, ctx: CallContext) -> str:
        return ctx.call_id

    await server.serve(svc, instance_id="q1")
    # The first call may go through the router while the cache loads; later ones go direct.
    await caller.call("quotes.quote", "AAPL", returns=str)
    direct_id = await caller.call("quotes.quote", "AAPL", returns=str)
    assert not await recorded(raw_nats, f"quotes.quote.svc_a.{direct_id}")
    durable_id = await caller.call("quotes.quote", "AAPL", returns=str, durable=True)
    assert await recorded(raw_nats, f"quotes.quote.svc_a.{durable_id}")
    own = await caller.call("quotes.quote", "AAPL", returns=str, call_id="mine-1")
    assert own == "mine-1" and await recorded(raw_nats, "quotes.quote.svc_a.mine-1")


async def test_a_call_id_with_durable_false_is_refused(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, _ = clients
    with pytest.raises(InvalidArgumentError, match="exactly once"):
        await caller.call("service_b.do_work", work(), call_id="c-1", durable=False)
    with pytest.raises(InvalidArgumentError, match="durable must be"):
        await caller.call("service_b.do_work", work(), durable="no")  # type: ignore[call-overload]


async def test_the_instance_refuses_direct_calls_it_must_not_run(
    clients: tuple[IPCClient, IPCClient], raw_nats: NATS
) -> None:
    """A caller's cache may be behind the router: the instance is the judge."""
    caller, server = clients
    svc = CountingService()
    b1 = await server.serve(svc.service, instance_id="b1", resources=["acc_1"])
    b2 = await server.serve(svc.service, instance_id="b2", resources=["acc_1"])

    assert (await send(raw_nats, b1, b1.epoch - 1, "acc_1"))[0] == "stale-epoch"
    assert (await send(raw_nats, b2, b2.epoch, "acc_1"))[0] == "not-owner"  # b2 is acc_1's standby
    assert (await send(raw_nats, b2, b2.epoch, None))[0] == "not-owner"  # nor the service's active
    refused, reply = await send(raw_nats, b1, b1.epoch + 1, "acc_1")  # an epoch it has not heard of
    assert refused == "stale-epoch" and reply.error is not None
    assert reply.error.code is ErrorCode.FAILED_PRECONDITION
    ok, reply = await send(raw_nats, b1, b1.epoch, "acc_1")
    assert ok == "" and reply.error is None
    assert sum(svc.runs.values()) == 1  # only the admitted call ran


async def test_the_subject_not_the_body_says_whether_a_call_is_direct(
    clients: tuple[IPCClient, IPCClient], raw_nats: NATS
) -> None:
    """Only the router may publish on the inbox, callers on ``<inbox>.d``: the instance
    admits and runs a call by where it arrived, whatever its ``direct`` flag says."""
    _, server = clients
    svc = CountingService()
    b1 = await server.serve(svc.service, instance_id="b1", resources=["acc_1"])
    b2 = await server.serve(svc.service, instance_id="b2", resources=["acc_1"])

    # A routed-looking call on the direct subject is a direct call: b2 is a standby.
    refused, reply = await send(raw_nats, b2, b2.epoch, "acc_1", direct=False)
    assert refused == "not-owner" and reply.error is not None
    refused, _ = await send(raw_nats, b2, None, "acc_1", direct=False)
    assert refused == "stale-epoch"
    assert sum(svc.runs.values()) == 0

    # A direct-looking call on the inbox is a routed one: claimed and recorded, at most once.
    ok, reply = await send(raw_nats, b1, b1.epoch, "acc_1", to_inbox=True)
    assert ok == "" and reply.error is None
    assert await recorded(raw_nats, f"service_b.do_work.raw.{reply.call_id}")
    again, _ = await send(raw_nats, b1, b1.epoch, "acc_1", to_inbox=True)
    assert again == "" and sum(svc.runs.values()) == 1


async def test_direct_calls_follow_a_promotion_and_never_run_twice(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    """During a promotion the old active refuses direct calls (draining, then a new epoch)
    and the callers fall back to the router: every call succeeds, on one instance."""
    caller, server = clients
    svc = CountingService()
    b1 = await server.serve(svc.service, instance_id="b1", resources=["acc_1"])
    b2 = await server.serve(svc.service, instance_id="b2", resources=["acc_1"])
    served: list[str] = []
    running = True

    async def load() -> None:
        while running:
            result = await caller.call(
                "service_b.do_work",
                work(),
                resource_id="acc_1",
                returns=WorkResult,
                durable=False,
                timeout=10,
            )
            served.append(result.instance_id)

    workers = [asyncio.create_task(load()) for _ in range(4)]
    try:
        await until(lambda: served.count("b1") >= 20, 10)
        promotion = await caller.admin.promote("service_b", "b2")
        assert promotion.instance_id == "b2"
        since = len(served)
        await until(lambda: served[since:].count("b2") >= 20, 10)
    finally:
        running = False
        await asyncio.gather(*workers)
    assert b2.role == "active" and "acc_1" in b2.claimed and "acc_1" not in b1.claimed
    after = served[served.index("b2") :]
    assert "b1" not in after[len(after) // 2 :]  # the cache moved to b2 for good
    assert max(svc.runs.values()) == 1


async def test_a_draining_instance_refuses_direct_calls(
    clients: tuple[IPCClient, IPCClient], raw_nats: NATS
) -> None:
    """While an instance drains, a direct call is refused and goes through the router,
    which answers as it does for any call to a draining instance without a standby."""
    caller, server = clients
    svc = CountingService()
    b1 = await server.serve(svc.service, instance_id="b1", resources=["acc_1"])
    await caller.call("service_b.do_work", work(), resource_id="acc_1", durable=False)
    result = await caller.admin.drain("b1", wait=0)  # no standby: it stays draining
    assert result.draining
    await until(lambda: b1._draining, 2)
    before = sum(svc.runs.values())
    assert (await send(raw_nats, b1, b1.epoch, "acc_1"))[0] == "draining"
    with pytest.raises(ServiceUnavailableError, match="draining"):
        await caller.call(
            "service_b.do_work", work(), resource_id="acc_1", durable=False, timeout=5
        )
    assert sum(svc.runs.values()) == before
    await caller.admin.drain("b1", cancel=True)
    await until(lambda: not b1._draining, 2)
    answer = await caller.call(
        "service_b.do_work", work(), resource_id="acc_1", durable=False, returns=WorkResult
    )
    assert answer.instance_id == "b1" and not await recorded(
        raw_nats, f"service_b.do_work.svc_a.{answer.call_id}"
    )


async def test_instances_of_an_older_sdk_get_no_direct_calls_and_still_hand_over(
    clients: tuple[IPCClient, IPCClient], raw_nats: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance that does not say it takes direct calls (an SDK from before them) never
    gets one, and a promotion does not wait for a drain acknowledgement it cannot send."""
    caller, server = clients

    class OldRegistration(Registration):
        direct: bool = False

        def model_dump(self, **kwargs: Any) -> dict[str, Any]:
            return {**super().model_dump(**kwargs), "direct": False}

    svc = CountingService()
    with monkeypatch.context() as old:
        old.setattr(_serving, "Registration", OldRegistration)
        old.setattr(_serving.ServiceInstance, "_refuses_direct", property(lambda self: False))
        await server.serve(svc.service, instance_id="b1", resources=["acc_1"])
        await caller.call("service_b.do_work", work(), resource_id="acc_1")  # cache loaded
        result = await caller.call(
            "service_b.do_work", work(), resource_id="acc_1", returns=WorkResult, durable=False
        )
        assert result.instance_id == "b1"
        assert await recorded(raw_nats, f"service_b.do_work.svc_a.{result.call_id}")  # routed
        async with IPCClient(server.servers, name="new") as new:
            b2 = await new.serve(svc.service, instance_id="b2", resources=["acc_1"])  # old too
            promotion = await asyncio.wait_for(caller.admin.promote("service_b", "b2"), 10)
            assert promotion.instance_id == "b2" and "acc_1" in b2.claimed
            await b2.stop()


async def test_a_reply_naming_another_call_is_not_taken(
    clients: tuple[IPCClient, IPCClient], raw_nats: NATS
) -> None:
    """A reply that names another call_id (forged, or misdelivered) is never this call's
    result: the caller raises INTERNAL instead of returning its payload."""
    caller, server = clients
    codec = Codec()
    svc = CountingService()
    b1 = await server.serve(svc.service, instance_id="b1", resources=["acc_1"])
    # Another responder answers on b1's direct subject in its place, with another call's
    # result.
    await b1._direct.unsubscribe()  # type: ignore[union-attr]  # noqa: SLF001
    forged = WorkResult(
        account="acc_1",
        amount=Decimal("999999.00"),
        placed_at=datetime.now(UTC),
        instance_id="b1",
        resource_id="acc_1",
        call_id="someone-elses",
    )
    answered: list[str] = []

    async def answer(msg: Msg) -> None:
        request = codec.decode_envelope(msg.data, CallRequest)
        answered.append(request.call_id)
        reply = CallReply(call_id="someone-elses", payload=codec.encode(forged))
        await msg.respond(codec.encode_envelope(reply))

    inbox = Subjects().instance_direct("service_b", "b1", b1._session)  # noqa: SLF001
    await raw_nats.subscribe(inbox, cb=answer)
    await raw_nats.flush()
    with pytest.raises(RemoteError) as refused:
        await caller.call(
            "service_b.do_work", work(), resource_id="acc_1", returns=WorkResult, durable=False
        )
    assert refused.value.code is ErrorCode.INTERNAL
    assert answered == [refused.value.call_id]  # it did go direct, to the forger
    assert not svc.runs
