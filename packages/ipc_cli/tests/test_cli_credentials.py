"""``ipc`` with credentials: flags and variables, refusals exit 3 with one line, and no
secret in any output."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ipc_cli._exit import ExitCode
from ipc_cli.main import app
from ipc_client_sdk import Credentials
from ipc_router.api.app import Router
from ipc_router.api.config import RouterConfig
from ipc_testing import NatsServerConfig, NatsServerProcess
from ipc_testing.auth import NKeyUser, new_nkey_user, users_block

SECRET = "s3cr3t-Pa55"

pytestmark = pytest.mark.usefixtures("no_credential_variables")

runner = CliRunner(env={"COLUMNS": "200"})


async def ipc(*argv: str) -> Result:
    return await asyncio.to_thread(lambda: runner.invoke(app, list(argv)))


def one_line_error(result: Result, code: ExitCode, *words: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("ipc: error:") and result.stderr.count("\n") == 1
    for word in words:
        assert word in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[NatsServerProcess, NKeyUser]]:
    """A nats-server admitting an NKey operator and alice (password), with a router."""
    keys = tmp_path / "keys"
    router_key, operator = new_nkey_user(keys, "router"), new_nkey_user(keys, "operator")
    server = NatsServerProcess(
        NatsServerConfig(
            store_dir=tmp_path / "nats",
            port=0,
            extra=users_block(router_key, operator, passwords={"alice": SECRET}),
        )
    )
    await server.start()
    config = RouterConfig(
        nats_url=server.url,
        data_dir=tmp_path / "data",
        credentials=Credentials(nkey_seed_file=router_key.seed_file),
    )
    try:
        async with Router(config):
            yield server, operator
    finally:
        await server.stop()


async def test_status_with_each_kind_of_credentials(
    secured: tuple[NatsServerProcess, NKeyUser], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, operator = secured
    url = server.url
    ok = await ipc("--nats-url", url, "--nats-nkey", str(operator.seed_file), "status", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["nats"]["connected_url"] == url

    in_url = await ipc("--nats-url", url.replace("nats://", f"nats://alice:{SECRET}@"), "status")
    assert in_url.exit_code == 0, in_url.stderr
    assert SECRET not in in_url.stdout + in_url.stderr

    monkeypatch.setenv("IPC_NATS_USER", "alice")
    monkeypatch.setenv("IPC_NATS_PASSWORD", SECRET)
    from_env = await ipc("--nats-url", url, "status")
    assert from_env.exit_code == 0, from_env.stderr
    assert SECRET not in from_env.stdout + from_env.stderr


async def test_refusals_exit_3_with_one_line(
    secured: tuple[NatsServerProcess, NKeyUser], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = secured[0].url
    one_line_error(
        await ipc("--nats-url", url, "status"),
        ExitCode.UNREACHABLE,
        "UNAUTHENTICATED",
        "no credentials were given",
    )
    stranger = new_nkey_user(tmp_path / "other", "stranger")
    one_line_error(
        await ipc("--nats-url", url, "--nats-nkey", str(stranger.seed_file), "status"),
        ExitCode.UNREACHABLE,
        "Authorization Violation",
    )
    one_line_error(
        await ipc("--nats-url", url, "--nats-nkey", str(tmp_path / "gone.nk"), "services"),
        ExitCode.UNREACHABLE,
        f"NKey seed file {tmp_path / 'gone.nk'}",
    )
    monkeypatch.setenv("IPC_NATS_USER", "alice")
    monkeypatch.setenv("IPC_NATS_PASSWORD", SECRET + "-wrong")
    one_line_error(await ipc("--nats-url", url, "status"), ExitCode.UNREACHABLE, "refused")


async def test_conflicting_credentials_are_a_usage_error() -> None:
    result = await ipc("--nats-token", SECRET, "--nats-nkey", "a.nk", "status")
    assert result.exit_code == ExitCode.USAGE
    assert "give one NATS identity" in result.stderr and SECRET not in result.stderr
    result = await ipc("--nats-url", "nats://a:b@127.0.0.1:1", "--nats-token", SECRET, "status")
    one_line_error(result, ExitCode.USAGE, "both in a URL")


def test_help_names_the_variables_never_their_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPC_NATS_PASSWORD", SECRET)
    monkeypatch.setenv("IPC_NATS_TOKEN", SECRET)
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "IPC_NATS_PASSWORD" in result.stdout and "IPC_TLS_CA" in result.stdout
    assert SECRET not in result.stdout


async def test_an_operation_nats_refuses_exits_1_naming_it(tmp_path: Path) -> None:
    """A viewer may ask for the status only: a promote is refused at once, not timed out."""
    keys = tmp_path / "keys"
    viewer = new_nkey_user(keys, "viewer")
    block = (
        f'authorization {{ users: [ {{ nkey: "{viewer.public_key}", permissions: {{ '
        'publish: ["ipc.admin.status", "_INBOX.>"], subscribe: ["_INBOX.>"] } } ] }\n'
    )
    server = NatsServerProcess(NatsServerConfig(store_dir=tmp_path / "nats", port=0, extra=block))
    await server.start()
    try:
        result = await ipc(
            "--nats-url",
            server.url,
            "--nats-nkey",
            str(viewer.seed_file),
            "--timeout",
            "30",
            "promote",
            "service_b",
            "b1",
        )
        one_line_error(result, ExitCode.FAILED, "PERMISSION_DENIED", "ipc.admin.promote")
    finally:
        await server.stop()
