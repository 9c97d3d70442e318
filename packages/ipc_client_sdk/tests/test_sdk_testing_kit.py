"""The SDK's testing kit: ``ipc_stack`` here, and from a project that only installs the SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from ipc_client_sdk import CallContext, IPCClient, Service
from ipc_client_sdk.testing import IPCStack
from ipc_router.infrastructure.process import pid_alive

PACKAGES = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


class Ping(BaseModel):
    n: int


class Pong(BaseModel):
    n: int
    by: str


echo = Service("echo")


@echo.method("ping")
async def ping(req: Ping, ctx: CallContext) -> Pong:
    return Pong(n=req.n, by=ctx.instance_id)


async def test_serves_and_calls_in_process(ipc_stack: IPCStack) -> None:
    await ipc_stack.serve(echo, instance_id="e1")
    async with ipc_stack.client("caller") as caller:
        assert await caller.call("echo.ping", Ping(n=3), returns=Pong) == Pong(n=3, by="e1")


async def test_the_session_stack_serves_in_blocks(ipc_stack_session: IPCStack) -> None:
    async with (
        ipc_stack_session.serving(echo, instance_id="s1"),
        ipc_stack_session.client("caller") as caller,
    ):
        assert (await caller.call("echo.ping", Ping(n=5), returns=Pong)).by == "s1"


async def test_a_killed_router_comes_back_and_calls_go_on(ipc_stack: IPCStack) -> None:
    async with (
        ipc_stack.serving(echo, instance_id="e1"),
        ipc_stack.client("caller") as caller,
    ):
        ipc_stack.kill_router()
        assert not ipc_stack.router.running
        await ipc_stack.restart_router()
        result = await ipc_stack.eventually(
            lambda: caller.call("echo.ping", Ping(n=1), returns=Pong, timeout=2)
        )
        assert result.by == "e1"


async def test_an_instance_process_serves_and_stops_with_the_stack(
    ipc_stack: IPCStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "kit_echo.py").write_text(textwrap.dedent("""
        from pydantic import BaseModel
        from ipc_client_sdk import CallContext, Service

        class Ping(BaseModel):
            n: int

        echo = Service("echo")

        @echo.method("ping")
        async def ping(req: Ping, ctx: CallContext) -> dict[str, object]:
            return {"n": req.n, "by": ctx.instance_id}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    proc = await ipc_stack.spawn_instance("kit_echo:echo", instance_id="p1")
    async with ipc_stack.client("caller") as caller:
        assert await caller.call("echo.ping", Ping(n=2), returns=Pong) == Pong(n=2, by="p1")
    await proc.stop()
    assert proc.returncode == 0, proc.log_tail(5)
    assert "stopped" in proc.log_tail(1)


async def test_stop_leaves_nothing_running(tmp_path: Path) -> None:
    stack = IPCStack(tmp_path)
    await stack.start()
    pids = [stack.nats.pid, stack.router.pid]
    async with IPCClient(stack.url, name="probe") as client:
        assert (await client.admin.status()).router_id == "ipc-stack"
    await stack.stop()
    await stack.stop()  # twice is fine
    assert not any(pid_alive(pid) for pid in pids if pid is not None)


PROJECT = """\
[project]
name = "kit-probe"
version = "0"
requires-python = ">=3.13"
dependencies = ["ipc-client-sdk[testing]", "pytest"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
"""

PROBE = """\
async def test_the_stack_answers(ipc_stack):
    async with ipc_stack.client("probe") as client:
        assert (await client.admin.status()).router_id == "ipc-stack"
"""


def _uv() -> str:
    uv = os.environ.get("UV") or "uv"  # ``uv run`` tells its children where it is
    try:
        subprocess.run([uv, "--version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("uv is not available to build the probe project's venv")
    return uv


def _install(uv: str, venv: Path) -> None:
    """The SDK with its testing extra from this repository's path (the router too: it is
    not published, so its path stands in for a registry), and pytest."""
    specs = [
        f"ipc-client-sdk[testing] @ {PACKAGES / 'ipc_client_sdk'}",
        f"ipc-router @ {PACKAGES / 'ipc_router'}",
        "pytest",
    ]
    # The probe venv named outright: UV_PYTHON (which CI exports) would otherwise win over
    # VIRTUAL_ENV and install into that interpreter instead.
    env = {k: v for k, v in os.environ.items() if k != "UV_PYTHON"} | {"VIRTUAL_ENV": str(venv)}
    python = ["--python", str(venv / "bin" / "python")]
    for offline in (["--offline"], []):  # the cache usually has everything
        done = subprocess.run(
            [uv, "pip", "install", "-q", *python, *offline, *specs],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0:
            return
    pytest.fail(f"installing the SDK into the probe venv failed: {done.stderr[-2000:]}")


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that run something from ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find leftover processes")
def test_a_fresh_project_gets_ipc_stack_from_the_sdk_alone(tmp_path: Path) -> None:
    project = tmp_path / "probe"
    project.mkdir()
    (project / "pyproject.toml").write_text(PROJECT)
    (project / "test_probe.py").write_text(PROBE)
    venv = project / ".venv"
    uv = _uv()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    _install(uv, venv)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    done = subprocess.run(
        [str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
    assert _processes_under(venv) == []
