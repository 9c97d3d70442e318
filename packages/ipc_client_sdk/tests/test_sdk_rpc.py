"""Workflow 1 against a real nats-server and a real router process."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from ipc_client_sdk import (
    CallTimeoutError,
    InvalidArgumentError,
    IPCClient,
    IPCError,
    PayloadTooLargeError,
    RemoteError,
    Service,
    ServiceUnavailableError,
)
from ipc_client_sdk.protocol import ErrorCode
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing import RouterProcess, eventually, until
from ipc_testing.scripts import run_example
from ipc_testing.workload import CountingService, WorkRequest, WorkResult


def work(account: str = "acc_XYZ", **kw: object) -> WorkRequest:
    return WorkRequest(
        account=account,
        amount=Decimal("1234.5678"),
        placed_at=datetime(2026, 11, 28, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=8))),
        **kw,  # type: ignore[arg-type]
    )


async def test_round_trip_keeps_decimal_and_datetime_exact(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = CountingService()
    await server.serve(svc.service, instance_id="b1", resources=["acc_XYZ"])
    request = work()
    result = await caller.call(
        "service_b.do_work", request, resource_id="acc_XYZ", timeout=5, returns=WorkResult
    )
    assert result.amount == Decimal("1234.5678") and str(result.amount) == "1234.5678"
    assert result.placed_at == request.placed_at
    assert result.placed_at.utcoffset() == timedelta(hours=8)
    assert (result.instance_id, result.resource_id) == ("b1", "acc_XYZ")
    # Without ``returns`` the decoded value comes back as it travelled.
    raw = await caller.call("service_b.do_work", work(), timeout=5)
    assert raw["amount"] == Decimal("1234.5678")


async def test_affinity_each_resource_stays_on_one_instance_and_claims_win(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    svc = CountingService(load_balanced=True)
    claims = {"b1": ["acc_0", "acc_1"], "b2": ["acc_2"], "b3": []}
    async with IPCClient(nats_server.url, name="caller") as caller:
        servers = [IPCClient(nats_server.url, name=i) for i in claims]
        try:
            for client, (instance_id, resources) in zip(servers, claims.items(), strict=True):
                await client.connect()
                await client.serve(svc.service, instance_id=instance_id, resources=resources)
            seen: dict[str, set[str]] = defaultdict(set)
            gate = asyncio.Semaphore(100)

            async def one(i: int) -> None:
                resource = f"acc_{i % 50}"
                async with gate:
                    result = await caller.call(
                        "service_b.do_work",
                        work(resource),
                        resource_id=resource,
                        timeout=20,
                        returns=WorkResult,
                    )
                seen[resource].add(result.instance_id)

            await asyncio.gather(*(one(i) for i in range(1000)))
        finally:
            for client in servers:
                await client.close()
    assert len(seen) == 50
    assert all(len(instances) == 1 for instances in seen.values()), seen
    assert (seen["acc_0"], seen["acc_1"], seen["acc_2"]) == ({"b1"}, {"b1"}, {"b2"})
    per_instance: dict[str, int] = defaultdict(int)
    for instances in seen.values():
        per_instance[next(iter(instances))] += 1
    # The 47 unclaimed resources are spread by least-assigned: nobody is left idle.
    assert set(per_instance) == {"b1", "b2", "b3"}
    assert sum(svc.runs.values()) == 1000


async def test_500_calls_in_flight_at_once_all_complete(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = CountingService()
    await server.serve(svc.service, instance_id="b1", concurrency=500)
    results = await asyncio.gather(
        *(
            caller.call(
                "service_b.do_work",
                work(f"acc_{i}", delay_s=0.2),
                timeout=30,
                returns=WorkResult,
            )
            for i in range(500)
        )
    )
    assert sorted(r.account for r in results) == sorted(f"acc_{i}" for i in range(500))
    assert len(svc.runs) == 500 and set(svc.runs.values()) == {1}


async def test_retries_with_the_same_call_id_run_the_handler_once(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = CountingService()
    await server.serve(svc.service, instance_id="b1")
    first = await caller.call("service_b.do_work", work(), call_id="order-1", returns=WorkResult)
    # Sequential retries: JetStream has seen the id; the record answers.
    for _ in range(3):
        again = await caller.call(
            "service_b.do_work", work(), call_id="order-1", returns=WorkResult
        )
        assert again == first
    # Concurrent copies of a slow call: one run, every copy gets its result.
    copies = await asyncio.gather(
        *(
            caller.call(
                "service_b.do_work", work(delay_s=0.3), call_id="order-2", returns=WorkResult
            )
            for _ in range(5)
        )
    )
    assert len({c.call_id for c in copies}) == 1
    assert svc.runs == {"order-1": 1, "order-2": 1}


async def test_a_late_answer_is_recorded_and_a_retry_gets_it_without_running_again(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = CountingService()
    instance = await server.serve(svc.service, instance_id="b1")
    with pytest.raises(CallTimeoutError) as info:
        await caller.call("service_b.do_work", work(delay_s=1.0), call_id="slow-1", timeout=0.5)
    assert info.value.call_id == "slow-1"
    # The handler finishes and records its result (a call leaves ``inflight`` once answered).
    await until(lambda: svc.runs["slow-1"] == 1 and instance.inflight == 0)
    result = await caller.call(
        "service_b.do_work", work(delay_s=1.0), call_id="slow-1", timeout=5, returns=WorkResult
    )
    assert result.call_id == "slow-1"
    assert svc.runs["slow-1"] == 1


async def test_handler_errors_arrive_as_remote_errors_without_a_traceback(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = CountingService()
    await server.serve(svc.service, instance_id="b1")
    with pytest.raises(RemoteError) as boom:
        await caller.call("service_b.do_work", work(fail_with="boom"), call_id="f-1")
    assert boom.value.code is ErrorCode.INTERNAL
    assert boom.value.message == "RuntimeError: boom"
    assert (boom.value.service, boom.value.instance, boom.value.call_id) == (
        "service_b",
        "b1",
        "f-1",
    )
    assert "Traceback" not in str(boom.value)
    with pytest.raises(RemoteError) as denied:
        await caller.call("service_b.do_work", work(fail_with="denied"))
    assert denied.value.code is ErrorCode.PERMISSION_DENIED
    # A failed run is recorded too: retrying it does not run the handler again.
    with pytest.raises(RemoteError):
        await caller.call("service_b.do_work", work(fail_with="boom"), call_id="f-1")
    assert svc.runs["f-1"] == 1


async def test_unknown_method_and_invalid_payload_do_not_run_the_handler(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = CountingService()
    await server.serve(svc.service, instance_id="b1")
    with pytest.raises(RemoteError) as missing:
        await caller.call("service_b.no_such_method", {})
    assert missing.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(RemoteError) as invalid:
        await caller.call("service_b.do_work", {"account": "acc_1", "amount": "not money"})
    assert invalid.value.code is ErrorCode.INVALID_ARGUMENT
    assert "amount" in invalid.value.message and "placed_at" in invalid.value.message
    assert sum(svc.runs.values()) == 0
    # A dict that fits the model is validated into it on the serving side.
    ok = await caller.call(
        "service_b.do_work",
        {"account": "acc_1", "amount": Decimal("2.50"), "placed_at": datetime.now(UTC)},
        returns=WorkResult,
    )
    assert ok.amount == Decimal("2.50")


async def test_no_instance_raises_service_unavailable_long_before_the_timeout(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as info:
        await caller.call("service_b.do_work", work(), timeout=10)
    assert time.monotonic() - started < 5  # half the timeout; in practice milliseconds
    assert info.value.code is ErrorCode.UNAVAILABLE and info.value.retryable
    # A stopped instance leaves its service with nobody: unavailable again, at once.
    svc = CountingService()
    instance = await server.serve(svc.service, instance_id="b1", resources=["acc_XYZ"])
    await caller.call("service_b.do_work", work(), resource_id="acc_XYZ")
    await instance.stop()
    with pytest.raises(ServiceUnavailableError):
        await caller.call("service_b.do_work", work(), resource_id="acc_XYZ", timeout=10)


async def test_stop_finishes_in_flight_calls(clients: tuple[IPCClient, IPCClient]) -> None:
    caller, server = clients
    svc = CountingService()
    instance = await server.serve(svc.service, instance_id="b1")
    pending = [
        asyncio.create_task(
            caller.call("service_b.do_work", work(delay_s=0.5), timeout=10, returns=WorkResult)
        )
        for _ in range(10)
    ]

    async def all_running() -> None:
        assert instance.inflight == 10

    await eventually(all_running, interval=0.01)
    await instance.stop()
    assert instance.inflight == 0
    results = await asyncio.gather(*pending)
    assert len(results) == 10


async def test_a_second_live_process_cannot_take_an_instance_id(
    nats_server: NatsServerProcess, clients: tuple[IPCClient, IPCClient]
) -> None:
    _, server = clients
    await server.serve(CountingService().service, instance_id="b1")
    async with IPCClient(nats_server.url) as other:
        with pytest.raises(RemoteError) as info:
            await other.serve(CountingService().service, instance_id="b1")
    assert info.value.code is ErrorCode.ALREADY_EXISTS


async def test_bad_arguments_are_refused_before_anything_is_sent(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    for target in ("service_b", "service_b.do.work", "a b.c", ".do_work"):
        with pytest.raises(InvalidArgumentError):
            await caller.call(target, {})
    with pytest.raises(InvalidArgumentError):
        await caller.call("service_b.do_work", {}, resource_id="acc XYZ")
    with pytest.raises(InvalidArgumentError):
        await caller.call("service_b.do_work", {}, call_id="x" * 200)
    for timeout in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError):
            await caller.call("service_b.do_work", {}, timeout=timeout)
    with pytest.raises(PayloadTooLargeError):
        await caller.call("service_b.do_work", {"blob": b"x" * (2 * 1024 * 1024)})
    with pytest.raises(InvalidArgumentError):
        await server.serve(CountingService().service, instance_id="b 1")
    with pytest.raises(InvalidArgumentError):
        await server.serve(CountingService().service, instance_id="b1", resources="acc_1")


async def test_the_workflow1_example_runs_against_a_real_router(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    code, text = await run_example("workflow1.py", nats_server.url)
    assert code == 0, text
    assert "booked 18725.00 for acc_XYZ on b1" in text
    assert "answered from the record: True" in text
    assert "after stop: UNAVAILABLE" in text


async def test_a_retry_landing_on_another_instance_waits_for_the_first_run(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    svc = CountingService(load_balanced=True)
    async with (
        IPCClient(nats_server.url) as caller,
        IPCClient(nats_server.url) as b1,
        IPCClient(nats_server.url) as b2,
    ):
        await b1.serve(svc.service, instance_id="b1")
        await b2.serve(svc.service, instance_id="b2")
        # No resource: round robin, so the retry goes to the other instance.
        with pytest.raises(CallTimeoutError):
            await caller.call("service_b.do_work", work(delay_s=1.5), call_id="rr-1", timeout=0.5)
        retry = await caller.call(
            "service_b.do_work", work(delay_s=1.5), call_id="rr-1", timeout=10, returns=WorkResult
        )
        assert retry.call_id == "rr-1"
        # A retry that cannot wait long enough is told why, and still does not run it.
        with pytest.raises(CallTimeoutError):
            await caller.call("service_b.do_work", work(delay_s=5), call_id="rr-2", timeout=0.3)
        messages = []
        for _ in range(3):  # the explanation races the caller's own timer by 0.25 s
            with pytest.raises(CallTimeoutError) as info:
                await caller.call("service_b.do_work", work(delay_s=5), call_id="rr-2", timeout=1.0)
            messages.append(info.value.message)
        assert any("already running" in m for m in messages), messages
    assert svc.runs == {"rr-1": 1, "rr-2": 1}


async def test_a_retryable_handler_error_is_not_recorded_so_a_retry_runs_again(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    attempts = 0
    svc = Service("flaky")

    @svc.method("book")
    async def book(req: int) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise IPCError("exchange busy", code=ErrorCode.UNAVAILABLE)
        return req * 2

    await server.serve(svc, instance_id="f1")
    with pytest.raises(ServiceUnavailableError):
        await caller.call("flaky.book", 21, call_id="flaky-1")
    assert await caller.call("flaky.book", 21, call_id="flaky-1", returns=int) == 42
    assert await caller.call("flaky.book", 21, call_id="flaky-1", returns=int) == 42
    assert attempts == 2


async def test_a_call_cut_short_by_stop_is_aborted_and_never_run_again(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = CountingService()
    instance = await server.serve(svc.service, instance_id="b1")
    pending = asyncio.create_task(
        caller.call("service_b.do_work", work(delay_s=5), call_id="cut-1", timeout=10)
    )

    async def running() -> None:
        assert instance.inflight == 1

    await eventually(running, interval=0.01)
    await instance.stop(timeout=0.2)
    with pytest.raises(RemoteError) as info:
        await pending
    assert info.value.code is ErrorCode.ABORTED and not info.value.retryable
    await server.serve(svc.service, instance_id="b2")
    with pytest.raises(RemoteError) as again:
        await caller.call("service_b.do_work", work(), call_id="cut-1", timeout=5)
    assert again.value.code is ErrorCode.ABORTED
    assert svc.runs["cut-1"] == 1


class Plain:
    """A class Pydantic has no schema for."""


def test_types_pydantic_cannot_validate_are_refused_where_they_are_declared() -> None:
    svc = Service("svc")
    with pytest.raises(TypeError, match="request type"):

        @svc.method("m")
        async def m(req: Plain) -> None: ...

    with pytest.raises(TypeError, match="async def"):
        svc.method("sync")(lambda req: req)
    with pytest.raises(TypeError, match="takes|take"):

        @svc.method("three")
        async def three(a: int, b: int, c: int) -> None: ...

    with pytest.raises(ValueError, match="already declared"):

        @svc.method("dup")
        async def dup(req: int) -> None: ...

        @svc.method("dup")
        async def dup2(req: int) -> None: ...


async def test_returns_of_a_type_pydantic_cannot_validate_is_refused_before_sending(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = CountingService()
    await server.serve(svc.service, instance_id="b1")
    with pytest.raises(InvalidArgumentError):
        await caller.call("service_b.do_work", work(), returns=Plain)
    unhashable: Any = [int]
    with pytest.raises(InvalidArgumentError):
        await caller.call("service_b.do_work", work(), returns=unhashable)
    assert sum(svc.runs.values()) == 0


async def test_one_call_id_on_two_methods_is_two_calls(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = Service("desk")

    @svc.method("check")
    async def check(req: int) -> str:
        await asyncio.sleep(0.2)
        return "checked"

    @svc.method("place")
    async def place(req: int) -> str:
        await asyncio.sleep(0.2)
        return "placed"

    await server.serve(svc, instance_id="d1")
    assert await caller.call("desk.check", 1, call_id="same-1", returns=str) == "checked"
    assert await caller.call("desk.place", 1, call_id="same-1", returns=str) == "placed"
    # At the same time on one instance, too.
    both = await asyncio.gather(
        caller.call("desk.check", 2, call_id="same-2", returns=str),
        caller.call("desk.place", 2, call_id="same-2", returns=str),
    )
    assert list(both) == ["checked", "placed"]


async def test_an_error_reply_the_codec_cannot_carry_still_answers_and_is_recorded(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    runs = 0
    svc = Service("odd")

    @svc.method("fail")
    async def fail(req: int) -> None:
        nonlocal runs
        runs += 1
        raise IPCError("refused", code=ErrorCode.FAILED_PRECONDITION, details={"x": object()})

    await server.serve(svc, instance_id="o1")
    for _ in range(2):
        with pytest.raises(RemoteError) as info:
            await caller.call("odd.fail", 1, call_id="odd-1", timeout=5)
        assert info.value.code is ErrorCode.FAILED_PRECONDITION
    assert runs == 1


async def test_stop_that_runs_out_of_time_serves_nothing_after_it_returns(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    started: list[float] = []
    svc = Service("slowpoke")

    @svc.method("work")
    async def work_slowly(req: float) -> float:
        started.append(time.monotonic())
        await asyncio.sleep(req)
        return req

    instance = await server.serve(svc, instance_id="s1", concurrency=1)
    calls = [asyncio.create_task(caller.call("slowpoke.work", 1.0, timeout=20)) for _ in range(4)]

    async def first_started() -> None:
        assert started

    await eventually(first_started, interval=0.01)
    await instance.stop(timeout=0.5)
    stopped_at = time.monotonic()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(1.5)  # the scenario: nothing starts for a while after stop() returned
    assert all(t <= stopped_at for t in started), "a handler started after stop() returned"
    refused = [o for o in outcomes if isinstance(o, IPCError)]
    assert refused and all(
        o.code in (ErrorCode.UNAVAILABLE, ErrorCode.ABORTED) for o in refused
    ), outcomes


async def test_a_handler_blocking_its_event_loop_for_a_while_still_answers(
    clients: tuple[IPCClient, IPCClient], router: RouterProcess
) -> None:
    caller, server = clients
    svc = Service("cpu")

    @svc.method("crunch")
    async def crunch(req: float) -> float:
        time.sleep(req)  # noqa: ASYNC251  # the point: no heartbeats while it runs
        return req

    await server.serve(svc, instance_id="c1")
    assert await caller.call("cpu.crunch", 2.0, timeout=30, returns=float) == 2.0
    # It did count as dead for a moment (no heartbeats for 2 s); the router waited it out.
    assert "instance cpu.c1 missed heartbeats" in router.log_tail(50, sep="\n")


async def test_bad_serve_and_call_arguments_are_invalid_argument_errors(
    clients: tuple[IPCClient, IPCClient],
) -> None:
    caller, server = clients
    svc = CountingService().service
    bad: Any
    for bad in (0, -1, float("nan"), "1", 1000):
        with pytest.raises(InvalidArgumentError):
            await server.serve(svc, instance_id="b1", heartbeat_interval=bad)
    for bad in (0, "2", None, True):
        with pytest.raises(InvalidArgumentError):
            await server.serve(svc, instance_id="b1", concurrency=bad)
    for bad in (None, 5, [1]):
        with pytest.raises(InvalidArgumentError):
            await server.serve(svc, instance_id="b1", resources=bad)
    for bad in (None, 5, b"service_b.do_work", "s" * 5000 + ".m"):
        with pytest.raises(InvalidArgumentError):
            await caller.call(bad, {})
    with pytest.raises(InvalidArgumentError):
        await caller.call("service_b.do_work", {}, resource_id="r" * 4100)
    with pytest.raises(InvalidArgumentError):
        await server.serve(svc, instance_id="b1", resources=["r" * 200])
    with pytest.raises(InvalidArgumentError):
        Service("bad name")
