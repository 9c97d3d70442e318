"""``ipc auth init`` / ``add-service``, and every ``ipc`` command under the identities they
write: the operator for the operators' commands, a service identity for call and publish."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from typer.testing import CliRunner, Result

from ipc_cli._exit import ExitCode
from ipc_cli.main import app
from ipc_client_sdk._permissions import subject_matches
from ipc_router.infrastructure.nats_server import find_nats_server
from ipc_testing.instance import InstanceProcess
from ipc_testing.secured import SecuredStack

runner = CliRunner(env={"COLUMNS": "200"})


def ipc(*args: str) -> Result:
    return runner.invoke(app, list(args))


def test_init_writes_a_complete_config_and_private_seeds(tmp_path: Path) -> None:
    d = tmp_path / "auth"
    result = ipc("--prefix", "desk1.ipc", "auth", "init", str(d), "--port", "4333", "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    summary = json.loads(result.stdout)
    assert summary["prefix"] == "desk1.ipc" and summary["listen"] == "127.0.0.1:4333"
    assert [(i["name"], i["role"]) for i in summary["identities"]] == [
        ("router", "router"),
        ("operator", "operator"),
    ]
    for name in ("router", "operator"):
        seed = d / f"{name}.nk"
        assert stat.S_IMODE(seed.stat().st_mode) == 0o600
        assert seed.read_text().startswith("SU")
    manifest = (d / "identities.json").read_text()
    for name in ("router", "operator"):  # public keys only, never a seed
        assert (d / f"{name}.nk").read_text().strip() not in manifest
    conf = (d / "nats.conf").read_text()
    assert "port: 4333" in conf and "jetstream" in conf and 'include "authorization.conf"' in conf
    authorization = (d / "authorization.conf").read_text()
    assert "no_auth_user" not in conf + authorization
    assert '"desk1.ipc.admin.>"' in authorization and "DESK1_IPC_RESULTS" in authorization
    checked = subprocess.run(
        [str(find_nats_server()), "-c", str(d / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_add_service_limits_callees_and_never_overwrites_a_seed(tmp_path: Path) -> None:
    d = tmp_path / "auth"
    assert ipc("auth", "init", str(d)).exit_code == ExitCode.OK
    added = ipc("auth", "add-service", str(d), "svc_a", "--calls", "service_b", "--json")
    assert added.exit_code == ExitCode.OK, added.stderr
    info = json.loads(added.stdout)
    assert info["created"] and info["calls"] == ["service_b"]
    seed = (d / "svc_a.nk").read_bytes()
    authorization = (d / "authorization.conf").read_text()
    # Durable calls as itself only: the last token is the caller's name.
    call = '"ipc.call.service_b.*.svc_a"'
    assert call in authorization and '"ipc.call.*.*.svc_a"' not in authorization
    assert not subject_matches(call.strip('"'), "ipc.call.service_b.do_work.svc_x")
    assert "STREAM.INFO.KV_IPC_RESULTS" not in authorization
    # Direct calls: the instances' `.d` subjects only, never their inboxes (the router's)
    # nor their control subjects.
    direct = '"ipc.inst.service_b.*.*.d"'
    assert direct in authorization and '"ipc.inst.service_b.*.*"' not in authorization
    inbox, control = "ipc.inst.service_b.b1.s1", "ipc.inst.service_b.b1.s1.ctl"
    assert subject_matches(direct.strip('"'), f"{inbox}.d")
    assert not subject_matches(direct.strip('"'), inbox)
    assert not subject_matches(direct.strip('"'), control)
    # Again, with every service: the seed stays, the permissions change.
    again = ipc("auth", "add-service", str(d), "svc_a", "--json")
    assert again.exit_code == ExitCode.OK and not json.loads(again.stdout)["created"]
    assert (d / "svc_a.nk").read_bytes() == seed
    assert '"ipc.call.*.*.svc_a"' in (d / "authorization.conf").read_text()
    # A seed the manifest does not know is never overwritten.
    (d / "stray.nk").write_text("SUxxx\n")
    stray = ipc("auth", "add-service", str(d), "stray")
    assert stray.exit_code == ExitCode.FAILED and "never overwritten" in stray.stderr
    assert (d / "stray.nk").read_text() == "SUxxx\n"
    refused = ipc("auth", "init", str(d))
    assert refused.exit_code == ExitCode.FAILED and "already holds" in refused.stderr
    assert (d / "router.nk").exists()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["auth", "add-service", "{d}", "router"], "built-in identity"),
        (["auth", "add-service", "{d}", "bad.name"], "service"),
        (["auth", "add-service", "{d}", "ok", "--calls", "b*"], "service"),
        (["auth", "add-service", "{d}/missing", "svc"], "no ipc auth directory"),
    ],
)
def test_auth_errors_are_one_line_and_exit_1(tmp_path: Path, argv: list[str], words: str) -> None:
    assert ipc("auth", "init", str(tmp_path)).exit_code == ExitCode.OK
    result = ipc(*(a.replace("{d}", str(tmp_path)) for a in argv))
    assert result.exit_code == ExitCode.FAILED, result.stdout
    assert result.stderr.startswith("ipc: error:") and result.stderr.count("\n") == 1
    assert words in result.stderr


@pytest_asyncio.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[SecuredStack, InstanceProcess]]:
    stack = SecuredStack.create(tmp_path)
    b1 = InstanceProcess(stack.url, "b1", tmp_path, ("acc_1",), env=stack.env("service_b"))
    b2 = InstanceProcess(stack.url, "b2", tmp_path, ("acc_1",), env=stack.env("service_b"))
    try:
        await stack.start()
        await b1.start()
        await b2.start()
        yield stack, b1
    finally:
        await b1.stop()
        await b2.stop()
        await stack.stop()


async def as_identity(stack: SecuredStack, identity: str, *args: str) -> Result:
    argv = ["--nats-url", stack.url, "--nats-nkey", str(stack.auth.seed_file(identity)), *args]
    return await asyncio.to_thread(lambda: runner.invoke(app, argv))


async def as_json(stack: SecuredStack, identity: str, *args: str) -> Any:
    result = await as_identity(stack, identity, *args, "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
async def test_every_command_under_least_privilege(
    secured: tuple[SecuredStack, InstanceProcess],
) -> None:
    stack, _ = secured
    status = await as_json(stack, "operator", "status")
    assert isinstance(status, dict) and status["instances"] == 2
    services = await as_json(stack, "operator", "services")
    assert [s["service"] for s in services] == ["service_b"]
    rows = await as_json(stack, "operator", "instances", "service_b")
    assert {r["instance_id"]: r["role"] for r in rows} == {"b1": "active", "b2": "standby"}
    routes = await as_json(stack, "operator", "routes", "service_b")
    assert routes[0]["instance"] == "b1"
    watch = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ipc_cli",
        "--nats-url",
        stack.url,
        "watch",
        "--kind",
        "role",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **stack.env("operator"), "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert watch.stderr is not None and watch.stdout is not None
        assert b"watching role events" in await asyncio.wait_for(watch.stderr.readline(), 20)
        promoted = await as_identity(stack, "operator", "promote", "service_b", "b2")
        assert promoted.exit_code == ExitCode.OK, promoted.stderr
        event = json.loads(await asyncio.wait_for(watch.stdout.readline(), 10))
        assert event["kind"] == "role"
    finally:
        watch.send_signal(signal.SIGINT)
        await watch.wait()
    drained = await as_identity(stack, "operator", "drain", "b1", "--wait", "2")
    assert drained.exit_code == ExitCode.OK, drained.stderr
    undrained = await as_identity(stack, "operator", "drain", "b1", "--cancel")
    assert undrained.exit_code == ExitCode.OK, undrained.stderr
    request = json.dumps(
        {"account": "acc_1", "amount": "1.10", "placed_at": "2024-01-02T03:04:05+00:00"}
    )
    for extra in ((), ("--direct",)):
        called = await as_json(
            stack,
            "svc_a",
            "call",
            "service_b.do_work",
            request,
            "--resource-id",
            "acc_1",
            "--caller",
            "svc_a",
            *extra,
        )
        assert called["instance_id"] == "b2" and called["amount"] == "1.10"
    published = await as_identity(stack, "svc_a", "publish", "md.ticks.AAPL", '{"px": "1.5"}')
    assert published.exit_code == ExitCode.OK, published.stderr
    # Each identity is refused what it is not for: an operator does not call, a service
    # does not operate.
    refused = await as_identity(
        stack, "operator", "--timeout", "1", "call", "service_b.do_work", request
    )
    assert refused.exit_code != ExitCode.OK
    refused = await as_identity(stack, "svc_a", "--timeout", "1", "promote", "service_b", "b1")
    assert refused.exit_code != ExitCode.OK
    assert {r["instance_id"]: r["role"] for r in await as_json(stack, "operator", "instances")} == {
        "b1": "standby",
        "b2": "active",
    }
    # svc_a may call service_b only.
    other = await as_identity(
        stack, "svc_a", "--timeout", "1", "call", "svc_x.anything", "null", "--caller", "svc_a"
    )
    assert other.exit_code != ExitCode.OK
