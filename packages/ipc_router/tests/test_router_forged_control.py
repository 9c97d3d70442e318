"""What the protocol enforces on its own, on a NATS without permissions: an attacker is a
plain nats-py connection with no rights beyond those every client has there.

- The instance's own operations (deregister, the drain of a stopping instance, heartbeats)
  need its current session: without it, or with another, they are refused and change nothing.
- A forged takeover notice on an instance's control subject does not silence it: the
  instance checks its registry record, keeps serving and heartbeating.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ipc_client_sdk import IPCClient, ServiceInstance
from ipc_client_sdk.protocol import (
    AdminOp,
    AdminReply,
    AdminRequest,
    Codec,
    ErrorCode,
    ErrorInfo,
    Heartbeat,
    InstanceState,
    Subjects,
)
from ipc_router.application.errors import InstanceReplacedError, SessionRequiredError
from ipc_router.application.handover import Handovers
from ipc_router.application.inflight import InflightTracker
from ipc_router.application.membership import HeartbeatReports, Membership
from ipc_router.application.registry import HeartbeatOutcome, InstanceRegistry
from ipc_router.domain import Role, RoutingTable
from ipc_router.infrastructure.kv_registry import record_from_wire, record_to_wire
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import RouterProcess, until
from ipc_testing.fakes import (
    FakeClock,
    InMemoryInstanceRepository,
    InMemoryRouteRepository,
    make_instance,
)
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

CODEC = Codec()
SUBJECTS = Subjects()


def work() -> WorkRequest:
    return WorkRequest(account="acc_1", amount=Decimal("1.00"), placed_at=datetime.now(UTC))


@pytest.fixture
async def attacker(nats_server: NatsServerProcess) -> AsyncIterator[NATS]:
    """A plain NATS connection with no special rights."""
    nc = await nats.connect(nats_server.url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def served(
    nats_server: NatsServerProcess, router: RouterProcess
) -> AsyncIterator[tuple[IPCClient, ServiceInstance]]:
    """A caller, and instance b1 of service_b serving in this process (active, owns acc_1)."""
    svc = CountingService()
    async with (
        IPCClient(nats_server.url, name="caller") as caller,
        IPCClient(nats_server.url, name="server") as server,
    ):
        instance = await server.serve(
            svc.service, instance_id="b1", resources=["acc_1"], heartbeat_interval=0.1
        )
        yield caller, instance


async def ask(nc: NATS, op: AdminOp, args: dict[str, Any]) -> AdminReply:
    """A raw request on the leading router's control subject."""
    request = CODEC.encode_envelope(AdminRequest(op=op, args=args))
    msg = await nc.request(SUBJECTS.control(op), request, timeout=5)
    reply: AdminReply = CODEC.decode_envelope(msg.data, AdminReply)
    return reply


async def b1_as_the_router_sees_it(caller: IPCClient) -> tuple[str, bool]:
    (info,) = [i for i in await caller.admin.instances("service_b") if i.instance_id == "b1"]
    return info.role, info.draining


async def still_served_by_b1(caller: IPCClient) -> None:
    result = await caller.call(
        "service_b.do_work", work(), resource_id="acc_1", returns=WorkResult, timeout=5
    )
    assert result.instance_id == "b1"


async def test_deregister_and_drain_need_the_instances_session(
    served: tuple[IPCClient, ServiceInstance], attacker: NATS, router: RouterProcess
) -> None:
    caller, instance = served
    b1: dict[str, Any] = {"service": "service_b", "instance_id": "b1"}
    stopping: dict[str, Any] = {**b1, "timeout": 1.0, "handover": False}
    attempts: list[tuple[AdminOp, dict[str, Any], ErrorCode]] = [
        (AdminOp.DEREGISTER, b1, ErrorCode.PERMISSION_DENIED),
        (AdminOp.DEREGISTER, {**b1, "session": "0" * 16}, ErrorCode.FAILED_PRECONDITION),
        (AdminOp.DRAIN, stopping, ErrorCode.PERMISSION_DENIED),
        (AdminOp.DRAIN, {**stopping, "session": "0" * 16}, ErrorCode.FAILED_PRECONDITION),
    ]
    for op, args, code in attempts:
        reply = await ask(attacker, op, args)
        assert not reply.ok and reply.error is not None, (op, args, reply)
        assert reply.error.code is code, (op, args, reply.error)
    assert await b1_as_the_router_sees_it(caller) == ("active", False)
    assert instance.role == "active" and not instance.replaced
    await still_served_by_b1(caller)
    assert await router.wait_for_output("refused deregister of service_b.b1", timeout=5)
    assert await router.wait_for_output("refused drain of service_b.b1", timeout=5)


async def test_a_heartbeat_without_the_session_is_refused(
    served: tuple[IPCClient, ServiceInstance], attacker: NATS, router: RouterProcess
) -> None:
    _, instance = served
    answers: list[Msg] = []

    async def on_answer(msg: Msg) -> None:
        answers.append(msg)

    inbox = attacker.new_inbox()
    await attacker.subscribe(inbox, cb=on_answer)
    for session, why in [(None, "with no session"), ("0" * 16, "with another session")]:
        beat = Heartbeat(
            service="service_b", instance_id="b1", sent_at=time.time(), session=session
        )
        await attacker.publish(
            SUBJECTS.heartbeat("service_b", "b1"), CODEC.encode_envelope(beat), reply=inbox
        )

        def logged(why: str = why) -> bool:
            return why in router.log_tail(50)

        await until(logged, within=5)
    # Refused, and never answered: the router answers a heartbeat on the instance's own
    # control subject only, so a forger cannot make it publish state to a subject it picks.
    await until(lambda: "not its control subject" in router.log_tail(50), within=5)
    assert answers == []
    assert instance.role == "active" and not instance.replaced


async def test_a_forged_takeover_notice_costs_a_log_line_not_the_instance(
    served: tuple[IPCClient, ServiceInstance],
    attacker: NATS,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caller, instance = served
    # The attacker learns b1's control subject from its heartbeats' reply subject.
    control: list[str] = []
    beats: list[float] = []

    async def sniff(msg: Msg) -> None:
        control.append(msg.reply)
        beats.append(time.monotonic())

    await attacker.subscribe(SUBJECTS.heartbeat_all, cb=sniff)
    await until(lambda: bool(control))
    caplog.set_level(logging.WARNING, logger="ipc_client_sdk.serving")
    forged = AdminReply(
        ok=False,
        error=ErrorInfo(
            code=ErrorCode.FAILED_PRECONDITION,
            message="instance 'b1' of 'service_b' is registered by another process now",
        ),
    )
    await attacker.publish(control[-1], CODEC.encode_envelope(forged))
    await until(lambda: "keeps serving" in caplog.text)
    forged_at = time.monotonic()
    await until(lambda: sum(1 for t in beats if t > forged_at) >= 3)  # still heartbeating
    assert not instance.replaced and not instance.fenced and instance.role == "active"
    await still_served_by_b1(caller)
    assert await b1_as_the_router_sees_it(caller) == ("active", False)


async def test_a_forged_state_holds_only_until_the_next_heartbeat_answer(
    served: tuple[IPCClient, ServiceInstance], attacker: NATS
) -> None:
    caller, instance = served
    roles: list[str] = []

    async def follow() -> None:
        async for change in instance.role_changes():
            roles.append(change.role)

    following = asyncio.create_task(follow())
    control = SUBJECTS.instance_control("service_b", "b1", instance._session)  # sniffable
    for state in (
        InstanceState(role="x" * 10_000, epoch=instance.epoch, owned=[]),  # not a role
        InstanceState(role="standby", epoch=instance.epoch, owned=[]),  # a forged demotion
    ):
        reply = AdminReply(ok=True, result=state.model_dump())
        await attacker.publish(control, CODEC.encode_envelope(reply))
    await until(lambda: roles == ["standby", "active"])
    assert instance.role == "active" and instance.claimed == ("acc_1",)
    await still_served_by_b1(caller)
    following.cancel()


# --- the use cases, with fakes -------------------------------------------------------------
class Fixture:
    def __init__(self) -> None:
        self.registry = InstanceRegistry(
            RoutingTable(1.5),
            InMemoryInstanceRepository(),
            InMemoryRouteRepository(),
            FakeClock(100.0),
        )
        reports = HeartbeatReports()
        self.membership = Membership(self.registry, reports)
        self.handovers = Handovers(self.registry, InflightTracker(), reports, _Silent())

    async def b1(self) -> None:
        await self.registry.register(make_instance("svc", "b1", session="s1", resources=("r",)))

    def role(self) -> Role | None:
        record = self.registry.table.get("svc", "b1")
        return record.role if record is not None else None


class _Silent:
    async def tell(self, record: object, owned: object) -> None:
        return None


async def test_deregister_without_or_with_another_session_changes_nothing() -> None:
    f = Fixture()
    await f.b1()
    with pytest.raises(SessionRequiredError):
        await f.handovers.deregister("svc", "b1", None)
    with pytest.raises(InstanceReplacedError):
        await f.handovers.deregister("svc", "b1", "s2")
    assert f.role() is Role.ACTIVE
    await f.handovers.deregister("svc", "b1", "s1")
    assert f.role() is None


async def test_a_stopping_instances_drain_needs_its_session_an_operators_does_not() -> None:
    f = Fixture()
    await f.b1()
    record = f.registry.table.get("svc", "b1")
    assert record is not None
    with pytest.raises(SessionRequiredError):
        await f.handovers.drain(record, 0.0, hand_over=False)
    with pytest.raises(InstanceReplacedError):
        await f.handovers.drain(record, 0.0, hand_over=False, session="s2")
    assert not f.registry.table.get("svc", "b1").draining  # type: ignore[union-attr]
    drained = await f.handovers.drain(record, 0.0, hand_over=False, session="s1")
    assert drained.record.draining
    await f.handovers.drain(record, 0.0, cancel=True)  # an operator's: no session
    assert not f.registry.table.get("svc", "b1").draining  # type: ignore[union-attr]


async def test_a_heartbeat_without_a_session_does_not_keep_an_instance_alive() -> None:
    f = Fixture()
    await f.b1()
    answer = await f.membership.heartbeat(
        "svc", "b1", session=None, epoch=None, running=0, draining=False
    )
    assert answer.outcome is HeartbeatOutcome.REFUSED
    answer = await f.membership.heartbeat(
        "svc", "b1", session="s1", epoch=None, running=0, draining=False
    )
    assert answer.outcome is HeartbeatOutcome.OK


def test_a_stored_record_with_names_no_registration_takes_is_skipped() -> None:
    """Whoever may write the registry bucket cannot make the router log a name of 10 KB."""
    wire = record_to_wire(make_instance("svc", "b1", session="s1"))
    assert record_from_wire(wire).instance_id == "b1"
    for field in ("service", "instance_id"):
        with pytest.raises(ValueError):
            record_from_wire({**wire, field: "x" * 10_000})
