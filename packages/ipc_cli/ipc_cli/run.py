"""``ipc run module:service``: serve a ``Service`` object as one instance until a signal.

It imports the module (``--app-dir`` first on ``sys.path``, the current folder by
default), connects with the global NATS options, serves, and on SIGINT or SIGTERM stops
the planned way (roles handed over, calls in flight finished), then exits 0.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import typer

from ipc_cli._exit import ExitCode, fail
from ipc_cli.main import Settings, app


@app.command("run")
def run(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="MODULE:SERVICE, e.g. orders:service_b."),
    instance_id: str | None = typer.Option(
        None, "--instance-id", help="The instance's id (default: <host>-<pid>)."
    ),
    resources: list[str] = typer.Option(
        [], "--resources", help="Resources it claims (repeat, or comma-separated)."
    ),
    app_dir: Path = typer.Option(
        Path("."), "--app-dir", help="Folder put first on sys.path to import MODULE from."
    ),
) -> None:
    """Serve a Service object as one instance until SIGINT/SIGTERM, then stop gracefully."""
    settings: Settings = ctx.obj
    # Loaded when the command runs: see ipc_cli._ops.
    from ipc_cli._ops import client_for, guarded  # noqa: PLC0415
    from ipc_client_sdk import InvalidArgumentError  # noqa: PLC0415
    from ipc_client_sdk._launch import load_service, serve_until_signalled  # noqa: PLC0415

    sys.path.insert(0, str(app_dir.resolve()))
    try:
        service = load_service(target)
    except InvalidArgumentError as e:
        fail(str(e), ExitCode.USAGE)
    iid = instance_id or f"{socket.gethostname()}-{os.getpid()}"
    claimed = [r.strip() for item in resources for r in item.split(",") if r.strip()]

    async def go() -> None:
        async with client_for(settings, f"{service.name}-{iid}") as client:
            await serve_until_signalled(
                client, service, instance_id=iid, resources=claimed, say=typer.echo
            )

    guarded(go)
