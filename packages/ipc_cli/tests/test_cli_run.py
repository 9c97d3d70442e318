"""``ipc run module:service`` as a process of its own: serves, and stops on a signal with
exit 0."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ipc_cli._exit import ExitCode
from ipc_cli.main import app
from ipc_client_sdk import IPCClient
from ipc_router.infrastructure.process import ChildProcess
from ipc_testing import NatsServerProcess, RouterProcess

MODULE = textwrap.dedent("""
    from ipc_client_sdk import CallContext, Service

    svc = Service("runme")

    @svc.method("hello")
    async def hello(req: dict[str, str], ctx: CallContext) -> str:
        return f"hello {req['name']} from {ctx.instance_id}"

    not_a_service = 42
    """)


class RunProcess(ChildProcess):
    """``python -m ipc_cli --nats-url URL run ...``."""

    def start_run(self, url: str, *args: str) -> None:
        argv = [sys.executable, "-m", "ipc_cli", "--nats-url", url, "run", *args]
        self.spawn(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_until_a_signal_then_stops_and_exits_0(
    nats_server: NatsServerProcess, router: RouterProcess, tmp_path: Path, sig: signal.Signals
) -> None:
    (tmp_path / "runme_mod.py").write_text(MODULE)
    proc = RunProcess(tmp_path / "run.log")
    proc.start_run(
        nats_server.url,
        "runme_mod:svc",
        "--instance-id",
        "r1",
        "--resources",
        "acc_1,acc_2",
        "--app-dir",
        str(tmp_path),
    )
    try:
        assert await proc.wait_for_output("serving as active", timeout=20), proc.log_tail(5)
        assert "owns ['acc_1', 'acc_2']" in proc.log_tail(1)
        async with IPCClient(nats_server.url, name="caller") as caller:
            answer = await caller.call("runme.hello", {"name": "ann"}, resource_id="acc_2")
        assert answer == "hello ann from r1"
        proc.signal(sig)
        assert await proc.wait_exit(15), proc.log_tail(5)
        assert proc.returncode == 0, proc.log_tail(5)
        assert proc.log_tail(1).endswith("runme/r1 stopped")
    finally:
        await proc.stop()


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("runme_mod", "is not 'module:service'"),
        ("no_such_module_here:svc", "cannot import"),
        ("runme_mod:missing", "has no attribute"),
        ("runme_mod:not_a_service", "not an ipc_client_sdk.Service"),
    ],
)
def test_run_refuses_a_target_that_is_not_a_service(
    tmp_path: Path, target: str, words: str
) -> None:
    (tmp_path / "runme_mod.py").write_text(MODULE)
    result = CliRunner().invoke(app, ["run", target, "--app-dir", str(tmp_path)])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert words in result.stderr
