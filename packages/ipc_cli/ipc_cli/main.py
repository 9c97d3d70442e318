"""``ipc``: the operators' command line. Talks to the router through the SDK only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from ipc_cli._exit import ExitCode
from ipc_client_sdk import (
    IPCClient,
    IPCConnectionError,
    IPCError,
    RouterStatus,
    RouterUnavailableError,
)
from ipc_client_sdk.protocol import DEFAULT_PREFIX, DEFAULT_SERVERS, Subjects

app = typer.Typer(
    name="ipc",
    help="AegisIPC operators' tool: inspect and steer the router over its admin subjects.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Global options, shared by every command."""

    nats_url: str
    timeout: float
    json: bool
    prefix: str


def _positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be positive, got {value}")
    return value


def _prefix(value: str) -> str:
    try:
        Subjects(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return value


@app.callback()
def _global(
    ctx: typer.Context,
    nats_url: str = typer.Option(
        DEFAULT_SERVERS, "--nats-url", envvar="IPC_NATS_URL", help="NATS server URL(s)."
    ),
    timeout: float = typer.Option(
        5.0, "--timeout", callback=_positive, help="Seconds to wait for NATS and the router."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (and only JSON) on stdout."),
    prefix: str = typer.Option(
        DEFAULT_PREFIX,
        "--prefix",
        envvar="IPC_SUBJECT_PREFIX",
        callback=_prefix,
        help="Subject prefix of the deployment.",
    ),
) -> None:
    ctx.obj = Settings(nats_url=nats_url, timeout=timeout, json=as_json, prefix=prefix)


def _run[T](settings: Settings, operation: Callable[[IPCClient, float], Awaitable[T]]) -> T:
    """Connect, run one operation, close, all within ``--timeout``; turn every failure into
    one line and an exit code.

    ``operation`` gets the client and the seconds left for its request.
    """

    async def go() -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.timeout
        client = IPCClient(
            settings.nats_url,
            name="ipc-cli",
            prefix=settings.prefix,
            connect_timeout=settings.timeout,
            request_timeout=settings.timeout,
        )
        await client.connect()
        try:
            return await operation(client, max(0.05, deadline - loop.time()))
        finally:
            # Nothing of the CLI's is in flight: a short drain is enough.
            await client.close(timeout=0.5)

    try:
        return asyncio.run(go())
    except (IPCConnectionError, RouterUnavailableError) as e:
        _fail(str(e), ExitCode.UNREACHABLE)
    except IPCError as e:
        _fail(str(e), ExitCode.FAILED)
    except ValueError as e:  # bad --nats-url and the like
        _fail(str(e), ExitCode.USAGE)


def _fail(message: str, code: ExitCode) -> NoReturn:
    typer.echo(f"ipc: error: {message}", err=True)
    raise typer.Exit(int(code))


def _print_json(value: BaseModel | dict[str, Any] | list[Any]) -> None:
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print JSON (and only JSON) on stdout.")


@app.command()
def status(ctx: typer.Context, as_json: bool = _json_option()) -> None:
    """Show the router: identity, version, uptime, NATS server and counts."""
    settings: Settings = ctx.obj
    result = _run(settings, lambda client, left: client.admin.status(timeout=left))
    if settings.json or as_json:
        _print_json(result)
        return
    Console().print(_status_table(result))


def _routing_role(leader: bool | None) -> str:
    if leader is None:
        return "unknown (older router)"
    return (
        "leader (registers instances, routes calls)" if leader else "standby (waits for the lease)"
    )


def _status_table(s: RouterStatus) -> Table:
    table = Table(title="AegisIPC router", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    nats = s.nats
    cluster = nats.cluster or "-"
    rows = [
        ("router id", s.router_id),
        ("version", f"{s.version} (protocol v{s.protocol_version})"),
        ("subject prefix", s.subject_prefix),
        ("started", s.started_at.isoformat(timespec="seconds")),
        ("uptime", _duration(s.uptime_s)),
        ("nats server", f"{nats.server_name or '-'} v{nats.version or '?'}"),
        ("nats url", nats.connected_url or "-"),
        ("nats cluster", cluster),
        ("jetstream", "enabled" if nats.jetstream else "DISABLED"),
        ("embedded nats", "yes" if nats.embedded else "no"),
        ("routing", _routing_role(s.leader)),
        ("services", str(s.services)),
        ("instances", str(s.instances)),
    ]
    for field, value in rows:
        table.add_row(field, value)
    return table


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{seconds:.1f}s"


def main() -> None:
    """Console entry point of ``ipc``."""
    app()
