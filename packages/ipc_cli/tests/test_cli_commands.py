"""Every ``ipc`` command against a real router, real NATS and instances in their own
processes: table and ``--json`` forms, and the exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner, Result

from ipc_cli._exit import ExitCode
from ipc_cli._ops import jsonable as _jsonable
from ipc_cli.main import app
from ipc_client_sdk import CallContext, IPCClient, Service
from ipc_router.infrastructure.process import ChildProcess
from ipc_testing import NatsServerProcess, RouterProcess, eventually, free_port
from ipc_testing.instance import InstanceProcess

runner = CliRunner(env={"COLUMNS": "200"})  # Rich tables at their full width


async def ipc(url: str, *args: str) -> Result:
    """``ipc --nats-url URL ARGS`` in-process (on a thread: it runs its own event loop)."""
    argv = ["--nats-url", url, *args]
    return await asyncio.to_thread(lambda: runner.invoke(app, argv))


async def ipc_json(url: str, *args: str) -> Any:
    result = await ipc(url, *args, "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    return json.loads(result.stdout)  # stdout holds JSON and nothing else


def fails(result: Result, code: ExitCode, *words: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("ipc: error:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


async def test_services_instances_and_routes_as_tables_and_json(
    nats_server: NatsServerProcess, instance_pair: tuple[InstanceProcess, InstanceProcess]
) -> None:
    url = nats_server.url
    services = await ipc_json(url, "services")
    assert [
        (s["service"], s["mode"], s["active"], s["instances"], s["healthy"]) for s in services
    ] == [("service_b", "active-standby", "b1", 2, 2)]
    table = await ipc(url, "services")
    assert table.exit_code == 0 and "service_b" in table.stdout and "active-standby" in table.stdout

    rows = await ipc_json(url, "instances", "service_b")
    by_id = {r["instance_id"]: r for r in rows}
    assert (by_id["b1"]["role"], by_id["b1"]["owned"]) == ("active", ["acc_1"])
    assert (by_id["b2"]["role"], by_id["b2"]["standby_for"]) == ("standby", ["acc_1"])
    assert all(r["health"] == "healthy" and r["heartbeat_age_s"] < 5 for r in rows)
    assert {"epoch", "inflight"} <= set(rows[0])
    table = await ipc(url, "instances")
    assert table.exit_code == 0 and "b2" in table.stdout and "standby" in table.stdout

    routes = await ipc_json(url, "routes", "service_b", "--resource", "acc_1")
    assert routes == [
        {
            "service": "service_b",
            "resource": "acc_1",
            "kind": "claim",
            "instance": "b1",
            "standbys": ["b2"],
        }
    ]
    table = await ipc(url, "routes")
    assert table.exit_code == 0 and "acc_1" in table.stdout

    fails(await ipc(url, "instances", "nope"), ExitCode.FAILED, "service 'nope' is not registered")
    fails(await ipc(url, "routes", "nope"), ExitCode.FAILED, "not registered")
    fails(await ipc(url, "instances", "bad name"), ExitCode.USAGE)


async def test_call_prints_the_result_as_json_and_fails_clearly(
    nats_server: NatsServerProcess, instance_pair: tuple[InstanceProcess, InstanceProcess]
) -> None:
    url = nats_server.url
    request = json.dumps(
        {"account": "acc_1", "amount": "12.30", "placed_at": "2026-11-28T10:00:00+00:00"}
    )
    for extra in ((), ("--json",)):
        result = await ipc(
            url, "call", "service_b.do_work", request, "--resource-id", "acc_1", *extra
        )
        assert result.exit_code == ExitCode.OK, result.stderr
        answer = json.loads(result.stdout)
        assert (answer["instance_id"], answer["amount"]) == ("b1", "12.30")  # exact
    direct = await ipc_json(
        url, "call", "service_b.do_work", request, "--resource-id", "acc_1", "--direct"
    )
    assert direct["instance_id"] == "b1"
    fails(
        await ipc(url, "call", "service_b.do_work", request, "--direct", "--call-id", "c1"),
        ExitCode.USAGE,
        "--direct",
    )
    fails(await ipc(url, "call", "service_b.do_work", "{not json"), ExitCode.USAGE, "not JSON")
    fails(await ipc(url, "call", "service_b", "{}"), ExitCode.USAGE, "service.method")
    fails(await ipc(url, "call", "service_b.nope", "{}"), ExitCode.FAILED, "no method 'nope'")
    fails(await ipc(url, "call", "nobody.work", "{}"), ExitCode.FAILED, "nobody")
    # Refused before anything is sent: the request does not fit the registered schema.
    fails(
        await ipc(url, "call", "service_b.do_work", '{"account": 1}', "--resource-id", "acc_1"),
        ExitCode.USAGE,
        "'amount' is a required property",
    )
    # Sent unchecked, the service's own validation refuses it.
    fails(
        await ipc(
            url,
            "call",
            "service_b.do_work",
            '{"account": 1}',
            "--resource-id",
            "acc_1",
            "--no-check",
        ),
        ExitCode.FAILED,
        "INVALID_ARGUMENT",
    )


async def test_publish_reaches_subscribers(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    got: list[Any] = []

    async def on_event(event: Any) -> None:
        got.append(event)

    async with IPCClient(nats_server.url) as client:
        await client.subscribe("md.ticks.*", on_event)
        result = await ipc(nats_server.url, "publish", "md.ticks.AAPL", '{"px": "1.5"}')
        assert result.exit_code == ExitCode.OK, result.stderr
        assert "published on md.ticks.AAPL" in result.stdout
        answer = await ipc_json(nats_server.url, "publish", "md.ticks.MSFT", "[1, 2]")
        assert answer["topic"] == "md.ticks.MSFT" and answer["sequence"] >= 2

        async def both() -> None:
            assert len(got) == 2

        await eventually(both, within=5)
    assert got == [{"px": "1.5"}, [1, 2]]
    fails(await ipc(nats_server.url, "publish", "md.*", "{}"), ExitCode.USAGE, "wildcard")
    fails(await ipc(nats_server.url, "publish", "md.x", "nope"), ExitCode.USAGE, "not JSON")


async def test_promote_and_drain_move_the_roles(
    nats_server: NatsServerProcess, instance_pair: tuple[InstanceProcess, InstanceProcess]
) -> None:
    url = nats_server.url
    promoted = await ipc_json(url, "promote", "service_b", "b2")
    assert (promoted["instance_id"], promoted["role"], promoted["demoted"]) == (
        "b2",
        "active",
        ["b1"],
    )
    rows = {r["instance_id"]: r for r in await ipc_json(url, "instances")}
    assert rows["b2"]["role"] == "active" and rows["b2"]["owned"] == ["acc_1"]
    back = await ipc(url, "promote", "service_b", "b1")
    assert back.exit_code == ExitCode.OK and "service_b/b1 is active" in back.stdout

    drained = await ipc_json(url, "drain", "b1", "--wait", "5")
    assert drained["drained"] is True and drained["role"] == "standby" and drained["owned"] == []
    rows = {r["instance_id"]: r for r in await ipc_json(url, "instances")}
    assert rows["b1"]["draining"] is True and rows["b2"]["role"] == "active"
    request = json.dumps(
        {"account": "acc_1", "amount": "1", "placed_at": "2026-11-28T10:00:00+00:00"}
    )
    answer = json.loads(
        (await ipc(url, "call", "service_b.do_work", request, "--resource-id", "acc_1")).stdout
    )
    assert answer["instance_id"] == "b2"
    table = await ipc(url, "drain", "b1", "--cancel")
    assert table.exit_code == ExitCode.OK and "takes calls again" in table.stdout

    fails(await ipc(url, "promote", "service_b", "nobody"), ExitCode.FAILED, "not registered")
    fails(await ipc(url, "drain", "nobody"), ExitCode.FAILED, "not registered")


async def test_drain_with_nowhere_to_hand_over_says_why_and_exits_1(
    nats_server: NatsServerProcess, instance_pair: tuple[InstanceProcess, InstanceProcess]
) -> None:
    url = nats_server.url
    standby = await ipc_json(url, "drain", "b2", "--wait", "5")  # holds no role: drained
    assert (standby["drained"], standby["reason"]) == (True, None)

    table = await ipc(url, "drain", "b1", "--wait", "5")
    fails(table, ExitCode.FAILED, "service_b/b1", "not drained", "no healthy standby")
    as_json = await ipc(url, "drain", "b1", "--wait", "5", "--json")
    assert as_json.exit_code == ExitCode.FAILED
    result = json.loads(as_json.stdout)
    assert (result["drained"], result["role"], result["owned"]) == (False, "active", ["acc_1"])
    assert "no healthy standby" in result["reason"]
    assert "no healthy standby" in as_json.stderr and as_json.stderr.count("\n") == 1

    rows = {r["instance_id"]: r for r in await ipc_json(url, "instances")}
    assert rows["b1"]["role"] == "active"  # it keeps its roles: nothing took them


async def start_watch(url: str, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ipc_cli",
        "--nats-url",
        url,
        "watch",
        "--kind",
        "role",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_watch_streams_router_events_until_interrupted(
    nats_server: NatsServerProcess, instance_pair: tuple[InstanceProcess, InstanceProcess]
) -> None:
    as_json = await start_watch(nats_server.url, "--json")
    as_table = await start_watch(nats_server.url)
    procs = (as_json, as_table)
    try:
        for proc in procs:  # subscribed once it says so (on stderr, not stdout)
            assert proc.stderr is not None
            line = await asyncio.wait_for(proc.stderr.readline(), 20)
            assert b"watching role events" in line
        promoted = await ipc(nats_server.url, "promote", "service_b", "b2")
        assert promoted.exit_code == ExitCode.OK, promoted.stderr
        assert as_json.stdout is not None and as_table.stdout is not None
        events = [
            json.loads(await asyncio.wait_for(as_json.stdout.readline(), 10)) for _ in range(2)
        ]
        lines = [
            (await asyncio.wait_for(as_table.stdout.readline(), 10)).decode() for _ in range(2)
        ]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        outcomes = [await asyncio.wait_for(proc.communicate(), 10) for proc in procs]
    for proc, (_, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0, err.decode()
        assert "Traceback" not in err.decode()
    assert {(e["instance_id"], e["role"]) for e in events} <= {("b2", "active"), ("b1", "standby")}
    assert all(e["kind"] == "role" for e in events)
    assert any("service_b/b2 is active of the service" in line for line in lines), lines


async def test_watch_rejects_unknown_kinds_and_unreachable_routers(
    nats_server: NatsServerProcess,
) -> None:
    fails(await ipc(nats_server.url, "watch", "--kind", "nope"), ExitCode.USAGE, "nope")
    fails(await ipc(nats_server.url, "--timeout", "1", "watch"), ExitCode.UNREACHABLE)


@pytest.mark.parametrize(
    "argv",
    [
        ["services"],
        ["instances"],
        ["routes"],
        ["promote", "service_b", "b1"],
        ["drain", "b1"],
        ["call", "service_b.do_work", "{}"],
        ["publish", "md.x", "{}"],
    ],
)
def test_every_command_exits_3_when_nats_is_unreachable(argv: list[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["--nats-url", url, "--timeout", "1", *argv])
    fails(result, ExitCode.UNREACHABLE, url)


async def test_every_router_command_exits_3_without_a_router(
    nats_server: NatsServerProcess,
) -> None:
    for argv in (["services"], ["instances"], ["routes"], ["promote", "s", "i"], ["drain", "i"]):
        fails(await ipc(nats_server.url, "--timeout", "1", *argv), ExitCode.UNREACHABLE, "router")


async def test_watch_exits_3_when_nats_goes_away(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    proc = await start_watch(nats_server.url)
    assert proc.stderr is not None
    assert b"watching" in await asyncio.wait_for(proc.stderr.readline(), 20)
    nats_server.kill()
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == ExitCode.UNREACHABLE, err.decode()
    assert "lost the connection" in err.decode() and "Traceback" not in err.decode()


@pytest.mark.slow  # the CLI as a subprocess, four times
async def test_usage_errors_are_one_line_from_the_real_command() -> None:
    for argv in (["--timeout", "0", "status"], ["status", "--bogus"], ["nope"], ["drain"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ipc_cli",
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == ExitCode.USAGE, argv
        assert out == b"" and err.startswith(b"ipc: error:") and err.count(b"\n") == 1, err


def test_json_never_carries_nan_and_refuses_it_as_input() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    for payload in ("NaN", "[1e400]", '{"x": -Infinity}'):
        result = runner.invoke(app, ["--nats-url", url, "call", "a.b", payload])
        fails(result, ExitCode.USAGE, "the request")
    assert json.loads(json.dumps(_jsonable([float("nan"), float("inf")]), allow_nan=False)) == [
        "NaN",
        "Infinity",
    ]


# --- contracts: ipc describe, and ipc call checking against them ------------------------
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


async def test_describe_service_b_prints_the_schemas_of_do_work(
    nats_server: NatsServerProcess, router: RouterProcess, tmp_path: Path
) -> None:
    url = nats_server.url
    proc = ChildProcess(tmp_path / "run.log")
    argv = ["--nats-url", url, "run", "service_b:service_b", "--app-dir", str(EXAMPLES)]
    proc.spawn(
        [sys.executable, "-m", "ipc_cli", *argv, "--instance-id", "b1"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert await proc.wait_for_output("serving as active", timeout=20), proc.log_tail(5)

        found = await ipc_json(url, "describe", "service_b")
        (do_work,) = found["methods"]
        assert do_work["method"] == "do_work"
        (version,) = do_work["versions"]
        assert version["instances"] == ["b1"] and version["durable"] is True
        assert version["summary"].startswith("Book the order.")
        request, response = version["request"], version["response"]
        assert request["title"] == "WorkRequest"
        assert request["required"] == ["account", "quantity", "price", "placed_at"]
        assert request["properties"]["price"]["x-msgpack"].startswith("ext 1")
        assert response["title"] == "WorkResult"
        assert response["properties"]["notional"]["x-msgpack"].startswith("ext 1")

        text = await ipc(url, "describe", "service_b", "do_work")
        assert text.exit_code == ExitCode.OK, text.stderr
        for words in ("service_b.do_work  (durable)", "request: WorkRequest", "price: decimal"):
            assert words in text.stdout
        assert "WARNING" not in text.stdout
        everything = await ipc_json(url, "describe")
        assert [s["service"] for s in everything] == ["service_b"]
        fails(await ipc(url, "describe", "service_b", "nope"), ExitCode.FAILED, "nope")
        fails(await ipc(url, "describe", "nobody"), ExitCode.FAILED, "nobody")

        skeleton = await ipc_json(url, "call", "--example", "service_b.do_work")
        assert skeleton == {
            "account": "",
            "quantity": 0,
            "price": "0",
            "placed_at": "2026-01-01T00:00:00+00:00",
        }
        request_text = json.dumps({**skeleton, "account": "acc_1", "quantity": 3, "price": "1.10"})
        booked = await ipc_json(url, "call", "service_b.do_work", request_text)
        assert (booked["notional"], booked["booked_by"]) == ("3.30", "b1")  # exact
        # A Unix time for the datetime: Pydantic takes it, so the check does too.
        as_number = json.dumps({**json.loads(request_text), "placed_at": 1767225600})
        assert (await ipc_json(url, "call", "service_b.do_work", as_number))["booked_by"] == "b1"

        bad = json.dumps({**json.loads(request_text), "quantity": "three"})
        fails(
            await ipc(url, "call", "service_b.do_work", bad),
            ExitCode.USAGE,
            "'three' is not of type 'integer' (at quantity)",
        )
    finally:
        await proc.stop()


class Order(BaseModel):
    price: Decimal


class OrderWithVenue(BaseModel):
    price: Decimal
    venue: str


async def book_v1(req: Order, ctx: CallContext) -> str:
    return ctx.instance_id


async def book_v2(req: OrderWithVenue, ctx: CallContext) -> str:
    return ctx.instance_id


async def test_describe_shows_which_instance_has_which_contract_and_call_takes_either(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    url = nats_server.url
    old, new = Service("books", load_balanced=True), Service("books", load_balanced=True)
    old.method("book")(book_v1)
    new.method("book")(book_v2)
    async with IPCClient(url, name="books") as server:
        await server.serve(old, instance_id="k1")
        await server.serve(new, instance_id="k2")
        text = await ipc(url, "describe", "books")
        assert text.exit_code == ExitCode.OK, text.stderr
        assert "WARNING: its instances registered 2 different contracts" in text.stdout
        assert "on k1" in text.stdout and "on k2" in text.stdout
        assert "venue: string" in text.stdout
        # It fits one of the two: sent. It fits neither: refused.
        assert (await ipc_json(url, "call", "books.book", '{"price": "1.5"}')) in ("k1", "k2")
        fails(await ipc(url, "call", "books.book", '{"venue": "X"}'), ExitCode.USAGE, "price")
