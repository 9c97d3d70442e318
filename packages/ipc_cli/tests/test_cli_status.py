"""``ipc status`` as an operator runs it: a real router, real NATS, real exit codes."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from typer.testing import CliRunner

from ipc_cli._exit import ExitCode
from ipc_cli.main import app
from ipc_testing import NatsServerProcess, RouterProcess, free_port

runner = CliRunner()


async def ipc(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run ``python -m ipc_cli ARGS`` as a subprocess: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ipc_cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_json_is_valid_and_complete(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    for argv in (
        ("--nats-url", nats_server.url, "status", "--json"),
        ("--nats-url", nats_server.url, "--json", "status"),
    ):
        code, out, err = await ipc(*argv)
        assert code == ExitCode.OK, err
        data = json.loads(out)  # stdout holds JSON and nothing else
        assert data["router_id"] == "test-router"
        assert data["nats"]["version"] == nats_server.version().lstrip("v")
        assert data["nats"]["jetstream"] is True
        assert (data["services"], data["instances"]) == (0, 0)


async def test_status_table(nats_server: NatsServerProcess, router: RouterProcess) -> None:
    code, out, err = await ipc("--nats-url", nats_server.url, "status")
    assert code == ExitCode.OK, err
    assert "test-router" in out
    assert nats_server.version().lstrip("v") in out
    assert "instances" in out


# Loaded by other commands, by the router or by the tests, never by ``ipc status``.
NOT_FOR_STATUS = (
    "rich",
    "jsonschema",
    "opentelemetry",
    "prometheus_client",
    "pydantic_settings",
    "nkeys",
    "nacl",
    "ipc_router",
    "ipc_testing",
    "ipc_client_sdk.testing",
    "ipc_client_sdk._calling",
    "ipc_client_sdk._pubsub",
    "ipc_client_sdk._serving",
    "ipc_client_sdk._tracing",
)


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
async def test_status_loads_only_what_it_needs(
    nats_server: NatsServerProcess, router: RouterProcess, as_json: bool
) -> None:
    argv = ["ipc", "--nats-url", nats_server.url, "status", *(["--json"] if as_json else [])]
    code = (
        f"import sys\nfrom ipc_cli._entry import main\nsys.argv = {argv!r}\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print(sorted(m for m in {NOT_FOR_STATUS!r} if m in sys.modules))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().strip().splitlines()
    assert "test-router" in out.decode()  # it did print the status
    assert lines[-1] == "[]", lines[-1]


async def test_environment_variable_names_the_server(
    nats_server: NatsServerProcess, router: RouterProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPC_NATS_URL", nats_server.url)
    code, out, _ = await ipc("status", "--json")
    assert code == ExitCode.OK
    assert json.loads(out)["router_id"] == "test-router"


@pytest.mark.slow  # the CLI as a subprocess
async def test_no_router_exits_3_promptly(nats_server: NatsServerProcess) -> None:
    started = time.monotonic()
    code, out, err = await ipc("--nats-url", nats_server.url, "--timeout", "3", "status")
    assert code == ExitCode.UNREACHABLE
    assert out == ""
    assert err.count("\n") == 1 and "no router" in err
    assert "Traceback" not in err
    assert time.monotonic() - started < 15  # well inside the test's own limits, not a benchmark


def test_unreachable_nats_exits_3_with_one_line() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["--nats-url", url, "--timeout", "1", "status", "--json"])
    assert result.exit_code == ExitCode.UNREACHABLE
    assert result.stdout == ""
    assert result.stderr.startswith("ipc: error:") and result.stderr.count("\n") == 1
    assert url in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout", "0", "status"],
        ["--timeout", "soon", "status"],
        ["--prefix", "ipc.>", "status"],
        ["status", "--no-such-flag"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == ExitCode.USAGE
    assert "Traceback" not in result.output


def test_help_lists_status() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "status" in result.stdout
