"""``ipc``: the operators' command line. Talks to the router through the SDK only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import json
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from ipc_cli._exit import ExitCode
from ipc_cli._schema import example, request_problem
from ipc_client_sdk import (
    ContractVersion,
    Credentials,
    EventKind,
    InvalidArgumentError,
    IPCClient,
    IPCConnectionError,
    IPCError,
    RemoteError,
    RouterEvent,
    RouterEvents,
    RouterStatus,
    RouterUnavailableError,
)
from ipc_client_sdk.protocol import (
    CREDENTIAL_ENV_VARS,
    DEFAULT_PREFIX,
    DEFAULT_SERVERS,
    validate_prefix,
)

EVENT_KINDS = tuple(kind.value for kind in EventKind)

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
    credentials: Credentials = dataclasses.field(default_factory=Credentials)


def _positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be positive, got {value}")
    return value


def _prefix(value: str) -> str:
    try:
        return validate_prefix(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


_CREDENTIAL_FILES = frozenset({"nkey_seed_file", "creds_file", "tls_ca", "tls_cert", "tls_key"})


def _credential_option(flag: str, name: str, text: str) -> Any:
    """A credential flag: falls back to its variable (through ``Credentials.from_env``, so
    that the SDK, the router and ``ipc`` read them alike); ``--help`` names the variable
    and never shows a value."""
    return typer.Option(
        None,
        flag,
        metavar="FILE" if name in _CREDENTIAL_FILES else "TEXT",
        help=f"{text} (env {CREDENTIAL_ENV_VARS[name]})",
        show_default=False,
        rich_help_panel="NATS credentials",
    )


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
    nats_nkey: str | None = _credential_option("--nats-nkey", "nkey_seed_file", "NKey seed file."),
    nats_creds: str | None = _credential_option(
        "--nats-creds", "creds_file", "NATS .creds file (user JWT and seed)."
    ),
    nats_user: str | None = _credential_option("--nats-user", "user", "User (with a password)."),
    nats_password: str | None = _credential_option(
        "--nats-password", "password", "Password; prefer the variable (flags show in ps)."
    ),
    nats_token: str | None = _credential_option(
        "--nats-token", "token", "Token; prefer the variable (flags show in ps)."
    ),
    tls_ca: str | None = _credential_option("--tls-ca", "tls_ca", "CA bundle (PEM)."),
    tls_cert: str | None = _credential_option("--tls-cert", "tls_cert", "Client cert (PEM)."),
    tls_key: str | None = _credential_option("--tls-key", "tls_key", "Client key (PEM)."),
) -> None:
    try:
        credentials = Credentials.from_env(
            nkey_seed_file=nats_nkey,
            creds_file=nats_creds,
            user=nats_user,
            password=nats_password,
            token=nats_token,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
    except InvalidArgumentError as e:
        raise typer.BadParameter(e.message) from None
    ctx.obj = Settings(
        nats_url=nats_url, timeout=timeout, json=as_json, prefix=prefix, credentials=credentials
    )


def _run[T](
    settings: Settings,
    operation: Callable[[IPCClient, float], Awaitable[T]],
    *,
    extra: float = 0.0,
) -> T:
    """Connect, run one operation, close, all within ``--timeout`` (plus ``extra`` seconds
    for an operation that waits by design: a call, a drain); turn every failure into one
    line and an exit code.

    ``operation`` gets the client and the seconds left for its request.
    """

    async def go() -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.timeout + extra
        client = IPCClient(
            settings.nats_url,
            name="ipc-cli",
            prefix=settings.prefix,
            connect_timeout=settings.timeout,
            request_timeout=settings.timeout,
            credentials=settings.credentials,
        )
        await client.connect()
        try:
            return await operation(client, max(0.05, deadline - loop.time()))
        finally:
            # Nothing of the CLI's is in flight: a short drain is enough.
            await client.close(timeout=0.5)

    return _guarded(go)


def _guarded[T](go: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``go`` and turn every failure into one line on stderr and an exit code."""
    try:
        return asyncio.run(go())
    except (IPCConnectionError, RouterUnavailableError) as e:
        _fail(str(e), ExitCode.UNREACHABLE)
    except InvalidArgumentError as e:  # a bad name, topic or id on the command line
        _fail(str(e), ExitCode.USAGE)
    except IPCError as e:
        _fail(str(e), ExitCode.FAILED)
    except ValueError as e:  # bad --nats-url and the like
        _fail(str(e), ExitCode.USAGE)


def _fail(message: str, code: ExitCode) -> NoReturn:
    typer.echo(f"ipc: error: {message}", err=True)
    raise typer.Exit(int(code))


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(_jsonable(value), indent=2, sort_keys=True, allow_nan=False))


def _jsonable(value: Any) -> Any:
    """Plain JSON values for whatever a call or an admin operation returned."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)  # exact: a Decimal never goes through float
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")  # JSON has none
    return value


def _settings(ctx: typer.Context, as_json: bool) -> Settings:
    settings: Settings = ctx.obj
    if as_json and not settings.json:
        settings = dataclasses.replace(settings, json=True)
    return settings


def _parse_json(text: str, what: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(text, parse_constant=refuse)
    except ValueError as e:  # JSONDecodeError included
        _fail(f"{what} is not JSON: {e}", ExitCode.USAGE)
    if _has_infinite(value):
        _fail(f"{what} has a number too large for a float", ExitCode.USAGE)
    return value


def _has_infinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_infinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_infinite(v) for v in value)
    return False


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    _console().print(table)


def _console() -> Console:
    """A terminal's own width; piped into a file or another program, wide enough that
    nothing is cut (Rich would assume 80 columns)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=200)


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print JSON (and only JSON) on stdout.")


@app.command()
def status(ctx: typer.Context, as_json: bool = _json_option()) -> None:
    """Show the router: identity, version, uptime, NATS server and counts."""
    settings = _settings(ctx, as_json)
    result = _run(settings, lambda client, left: client.admin.status(timeout=left))
    if settings.json:
        _print_json(result)
        return
    _console().print(_status_table(result))


@app.command()
def services(ctx: typer.Context, as_json: bool = _json_option()) -> None:
    """List the registered services: mode, active instance, instances, methods."""
    settings = _settings(ctx, as_json)
    found = _run(settings, lambda client, left: client.admin.services(timeout=left))
    if settings.json:
        _print_json(found)
        return
    rows = [
        [
            s.service,
            s.mode,
            s.active or "-",
            f"{s.healthy}/{s.instances}",
            str(s.claimed_resources),
            ", ".join(s.methods),
        ]
        for s in found
    ]
    _table(
        "services",
        ["service", "mode", "active", "healthy/instances", "claimed resources", "methods"],
        rows,
    )


@app.command()
def instances(
    ctx: typer.Context,
    service: str | None = typer.Argument(None, help="Only this service's instances."),
    as_json: bool = _json_option(),
) -> None:
    """List instances: role, health, heartbeat age, epoch, calls in flight, resources."""
    settings = _settings(ctx, as_json)
    found = _run(settings, lambda client, left: client.admin.instances(service, timeout=left))
    if settings.json:
        _print_json(found)
        return
    rows = [
        [
            i.service,
            i.instance_id,
            i.role + (" (draining)" if i.draining else ""),
            i.health,
            f"{i.heartbeat_age_s:.1f}s",
            str(i.epoch),
            str(i.inflight),
            ", ".join(i.owned) or "-",
            ", ".join(i.standby_for) or "-",
        ]
        for i in found
    ]
    columns = ["service", "instance", "role", "health", "heartbeat", "epoch", "in flight"]
    _table("instances", [*columns, "owns", "standby for"], rows)


@app.command()
def routes(
    ctx: typer.Context,
    service: str | None = typer.Argument(None, help="Only this service's routes."),
    resource: str | None = typer.Option(None, "--resource", help="Only this resource."),
    as_json: bool = _json_option(),
) -> None:
    """Show where resources go: claims (owner, then standbys) and sticky assignments."""
    settings = _settings(ctx, as_json)
    found = _run(
        settings,
        lambda client, left: client.admin.routes(service, resource=resource, timeout=left),
    )
    if settings.json:
        _print_json(found)
        return
    rows = [
        [r.service, r.resource, r.kind, r.instance, ", ".join(r.standbys) or "-"] for r in found
    ]
    _table("routes", ["service", "resource", "kind", "instance", "standbys"], rows)


@app.command()
def promote(
    ctx: typer.Context,
    service: str = typer.Argument(..., help="The service."),
    instance: str = typer.Argument(..., help="The instance to make active."),
    drain: float = typer.Option(
        10.0, "--drain", help="Seconds to wait for the calls in flight to the current active."
    ),
    as_json: bool = _json_option(),
) -> None:
    """Make an instance the active of its service and of every resource it claims."""
    settings = _settings(ctx, as_json)
    result = _run(
        settings,
        lambda client, _: client.admin.promote(service, instance, drain=drain),
        extra=drain + 10.0,
    )
    if settings.json:
        _print_json(result)
        return
    demoted = ", ".join(result.demoted) or "nobody"
    typer.echo(
        f"{result.service}/{result.instance_id} is {result.role} (epoch {result.epoch}); "
        f"owns {', '.join(result.owned) or 'no claimed resource'}; took over from {demoted}"
    )


@app.command()
def drain(
    ctx: typer.Context,
    instance: str = typer.Argument(..., help="The instance id."),
    service: str | None = typer.Option(None, "--service", help="Its service, if ambiguous."),
    wait: float = typer.Option(
        30.0, "--wait", help="Seconds to wait for its calls in flight to finish."
    ),
    cancel: bool = typer.Option(False, "--cancel", help="Route to it again."),
    as_json: bool = _json_option(),
) -> None:
    """Stop routing new calls to an instance, hand its roles to standbys, and report when
    its calls in flight are done."""
    settings = _settings(ctx, as_json)
    result = _run(
        settings,
        lambda client, _: client.admin.drain(instance, service=service, wait=wait, cancel=cancel),
        extra=wait + 10.0,
    )
    name = f"{result.service}/{result.instance_id}"
    if settings.json:
        _print_json(result)
    elif cancel:
        typer.echo(f"{name} takes calls again (as {result.role})")
    elif result.drained:
        typer.echo(f"{name} is drained: no call in flight, now {result.role}")
    if not cancel and not result.drained:
        # The reason on one line, for the operator and for scripts reading stderr.
        _fail(
            f"{name} gets no new calls but is not drained: {result.reason or 'unknown'}",
            ExitCode.FAILED,
        )


@app.command()
def call(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="SERVICE.METHOD"),
    payload: str = typer.Argument("null", help="The request, as JSON."),
    resource_id: str | None = typer.Option(None, "--resource-id", help="Route by resource."),
    call_timeout: float = typer.Option(
        10.0, "--timeout", callback=_positive, help="Seconds the call may take."
    ),
    call_id: str | None = typer.Option(None, "--call-id", help="Your id, for a safe retry."),
    direct: bool = typer.Option(
        False, "--direct", help="Straight to the instance, at most once (durable=False)."
    ),
    show_example: bool = typer.Option(
        False,
        "--example",
        help="Print a skeleton request from the method's contract; call nothing.",
    ),
    check: bool = typer.Option(
        True,
        "--check/--no-check",
        help="Refuse a request that does not fit the method's registered request schema.",
    ),
    as_json: bool = _json_option(),
) -> None:
    """Call a method (through the router, or --direct) and print its result as JSON.

    The request is checked first against the request schema the method's instances
    registered (exit 2 if it fits none); a method without a registered contract is called
    unchecked.
    """
    settings = _settings(ctx, as_json)
    if show_example:
        _print_json(_run(settings, lambda client, _: _example_of(client, target, settings)))
        return
    if direct and call_id is not None:
        _fail("--call-id asks for exactly once, which --direct cannot give", ExitCode.USAGE)
    request = _parse_json(payload, "the request")

    async def checked_call(client: IPCClient, _: float) -> Any:
        if check:
            versions = await _contract_of(client, target, settings.timeout)
            problem = request_problem(target, versions, request)
            if problem is not None:
                raise InvalidArgumentError(problem)  # exit 2, nothing sent
        return await client.call(
            target,
            request,
            resource_id=resource_id,
            timeout=call_timeout,
            call_id=call_id,
            durable=False if direct else None,
        )

    result = _run(settings, checked_call, extra=call_timeout + 1.0)
    _print_json(result)


async def _contract_of(client: IPCClient, target: str, timeout: float) -> list[ContractVersion]:
    """The contract versions registered for ``target`` (SERVICE.METHOD); none when it has
    none, or when the router cannot say (an older router, no router: the call decides)."""
    service, dot, method = target.partition(".")
    if not dot:
        return []
    try:
        found = await client.admin.describe(service, method, timeout=timeout)
    except (RemoteError, RouterUnavailableError, InvalidArgumentError):
        return []
    return [v for m in found.methods for v in m.versions]


async def _example_of(client: IPCClient, target: str, settings: Settings) -> Any:
    service, dot, method = target.partition(".")
    if not dot:
        raise InvalidArgumentError(f"target must be 'service.method', got {target!r}")
    found = await client.admin.describe(service, method, timeout=settings.timeout)
    contract = found.methods[0].contract if found.methods else None
    if contract is None or contract.request is None:
        why = "schemas were too large to register" if contract else "instances registered none"
        raise IPCError(f"{target} has no request schema to build an example from (its {why})")
    return example(contract.request)


@app.command()
def publish(
    ctx: typer.Context,
    topic: str = typer.Argument(..., help="The topic, e.g. md.ticks.AAPL."),
    event: str = typer.Argument(..., help="The event, as JSON."),
    event_id: str | None = typer.Option(None, "--event-id", help="Your id: stored once."),
    as_json: bool = _json_option(),
) -> None:
    """Publish an event on a topic."""
    settings = _settings(ctx, as_json)
    value = _parse_json(event, "the event")
    sequence = _run(
        settings,
        lambda client, left: client.publish(topic, value, event_id=event_id, timeout=left),
    )
    if settings.json:
        _print_json({"topic": topic, "sequence": sequence})
    else:
        typer.echo(f"published on {topic} (stream sequence {sequence})")


@app.command()
def watch(
    ctx: typer.Context,
    kind: str = typer.Option(
        ",".join(EVENT_KINDS), "--kind", help=f"Comma-separated: {', '.join(EVENT_KINDS)}."
    ),
    as_json: bool = _json_option(),
) -> None:
    """Print the router's events as they happen, until Ctrl-C."""
    settings = _settings(ctx, as_json)
    kinds = [k.strip() for k in kind.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(EVENT_KINDS))
    if not kinds or unknown:
        _fail(
            f"unknown event kind {', '.join(unknown) or repr(kind)} "
            f"(known: {', '.join(EVENT_KINDS)})",
            ExitCode.USAGE,
        )

    async def go() -> None:
        client = IPCClient(
            settings.nats_url,
            name="ipc-cli-watch",
            prefix=settings.prefix,
            connect_timeout=settings.timeout,
            request_timeout=settings.timeout,
            credentials=settings.credentials,
        )
        await client.connect()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
                loop.add_signal_handler(sig, stop.set)  # main thread only
        try:
            await client.admin.status(timeout=settings.timeout)  # a router is there
            # A supervisor must see a lost connection: events missed meanwhile are not
            # replayed, so the stream raises after an outage and watch exits 3.
            outage = max(settings.timeout, 5.0)
            async with client.admin.events(kinds=kinds, max_outage=outage) as events:
                # On stderr, so that stdout stays pure events (JSON lines with --json).
                typer.echo(f"watching {', '.join(kinds)} events; Ctrl-C stops", err=True)
                await _until(stop, _print_events(events, settings.json))
        finally:
            await client.close(timeout=0.5)

    _guarded(go)


async def _print_events(events: RouterEvents, as_json: bool) -> None:
    async for event in events:
        typer.echo(_event_line(event, as_json))
        sys.stdout.flush()


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends (its error is raised) or ``stop`` is set."""
    working = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (working, stopping):
            task.cancel()
        await asyncio.gather(working, stopping, return_exceptions=True)
    if not working.cancelled():
        working.result()


def _event_line(event: RouterEvent, as_json: bool) -> str:
    if as_json:
        return json.dumps(event.model_dump(mode="json", exclude={"v"}), sort_keys=True)
    at = time.strftime("%H:%M:%S", time.localtime(event.at)) + f".{int(event.at * 1000) % 1000:03d}"
    who = f"{event.service}/{event.instance_id}"
    if event.kind == "role":
        scope = f"resource {event.resource}" if event.resource else "the service"
        return (
            f"{at} role     {who} is {event.role} of {scope} (epoch {event.epoch}, {event.reason})"
        )
    return f"{at} {event.kind:<8} {who} {event.state}"


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
    """Console entry point of ``ipc``: usage errors are one line too (exit 2)."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("ipc: interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        # Click's (or Typer's bundled Click's) usage errors: a bad option, command or value.
        if not hasattr(e, "format_message") or getattr(e, "exit_code", None) != ExitCode.USAGE:
            raise
        typer.echo(f"ipc: error: {e.format_message()} (see 'ipc --help')", err=True)
        sys.exit(int(ExitCode.USAGE))
    sys.exit(code if isinstance(code, int) else 0)


# Commands kept in modules of their own register on ``app`` when imported, after it exists.
from ipc_cli import auth as _auth_command  # noqa: E402, F401
from ipc_cli import describe as _describe_command  # noqa: E402, F401
from ipc_cli import run as _run_command  # noqa: E402, F401
