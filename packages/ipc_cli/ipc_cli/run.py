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

from ipc_cli._exit import ExitCode
from ipc_cli.main import Settings, _fail, _guarded, app
from ipc_client_sdk import InvalidArgumentError, IPCClient
from ipc_client_sdk._launch import load_service, serve_until_signalled


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
    sys.path.insert(0, str(app_dir.resolve()))
    try:
        service = load_service(target)
    except InvalidArgumentError as e:
        _fail(str(e), ExitCode.USAGE)
    iid = instance_id or f"{socket.gethostname()}-{os.getpid()}"
    claimed = [r.strip() for item in resources for r in item.split(",") if r.strip()]

    async def go() -> None:
        client = IPCClient(
            settings.nats_url,
            name=f"{service.name}-{iid}",
            prefix=settings.prefix,
            connect_timeout=settings.timeout,
            request_timeout=settings.timeout,
            credentials=settings.credentials,
        )
        async with client:
            await serve_until_signalled(
                client, service, instance_id=iid, resources=claimed, say=typer.echo
            )

    _guarded(go)
