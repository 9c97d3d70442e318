"""What ``ipc``'s commands run: the SDK, Rich tables and JSON output.

Imported inside the commands, never by ``main`` at import time: ``ipc --help`` and usage
errors then load neither nats-py, pydantic, msgpack nor Rich.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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
from typing import TYPE_CHECKING, Any

import typer
from pydantic import BaseModel

from ipc_cli._exit import ExitCode, fail
from ipc_cli._schema import example, request_problem
from ipc_cli.main import Settings
from ipc_client_sdk import (
    InvalidArgumentError,
    IPCClient,
    IPCConnectionError,
    IPCError,
    RemoteError,
    RouterUnavailableError,
)

if TYPE_CHECKING:  # names for annotations: their modules load when a command uses them
    from rich.console import Console

    from ipc_client_sdk import ContractVersion, RouterEvent, RouterEvents, RouterStatus


def client_for(settings: Settings, name: str = "ipc-cli") -> IPCClient:
    """An unopened client with the global options."""
    return IPCClient(
        settings.nats_url,
        name=name,
        prefix=settings.prefix,
        connect_timeout=settings.timeout,
        request_timeout=settings.timeout,
        credentials=settings.credentials(),
    )


def run[T](
    settings: Settings,
    operation: Callable[[IPCClient, float], Awaitable[T]],
    *,
    extra: float = 0.0,
    name: str = "ipc-cli",
) -> T:
    """Connect, run one operation, close, all within ``--timeout`` (plus ``extra`` seconds
    for an operation that waits by design: a call, a drain); turn every failure into one
    line and an exit code. ``name``: the client's name (a call's caller token).

    ``operation`` gets the client and the seconds left for its request.
    """

    async def go() -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.timeout + extra
        client = client_for(settings, name)
        await client.connect()
        try:
            return await operation(client, max(0.05, deadline - loop.time()))
        finally:
            # Nothing of the CLI's is in flight: a short drain is enough.
            await client.close(timeout=0.5)

    return guarded(go)


def guarded[T](go: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``go`` and turn every failure into one line on stderr and an exit code."""
    try:
        return asyncio.run(go())
    except (IPCConnectionError, RouterUnavailableError) as e:
        fail(str(e), ExitCode.UNREACHABLE)
    except InvalidArgumentError as e:  # a bad name, topic or id on the command line
        fail(str(e), ExitCode.USAGE)
    except IPCError as e:
        fail(str(e), ExitCode.FAILED)
    except ValueError as e:  # bad --nats-url and the like
        fail(str(e), ExitCode.USAGE)


async def with_progress[T](work: Awaitable[T], what: str, asked: bool) -> T:
    """Await ``work``, saying on stderr each second what it waits for and for how long,
    when ``asked`` or when stderr is a terminal (there on one line, rewritten)."""
    tty = sys.stderr.isatty()
    if not (asked or tty):
        return await work
    task = asyncio.ensure_future(work)
    started = time.monotonic()
    try:
        while not (await asyncio.wait({task}, timeout=1.0))[0]:
            line = f"ipc: {what}, {time.monotonic() - started:.0f}s"
            sys.stderr.write(f"\r\033[K{line}" if tty else line + "\n")
            sys.stderr.flush()
    finally:
        task.cancel()  # when we are cancelled; a no-op once it is done
    if tty:
        sys.stderr.write("\r\033[K")  # the progress line goes, the result stays
    return task.result()


def print_json(value: Any) -> None:
    typer.echo(json.dumps(jsonable(value), indent=2, sort_keys=True, allow_nan=False))


def jsonable(value: Any) -> Any:
    """Plain JSON values for whatever a call or an admin operation returned."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
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


def parse_json(text: str, what: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(text, parse_constant=refuse)
    except ValueError as e:  # JSONDecodeError included
        fail(f"{what} is not JSON: {e}", ExitCode.USAGE)
    if _has_infinite(value):
        fail(f"{what} has a number too large for a float", ExitCode.USAGE)
    return value


def _has_infinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_infinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_infinite(v) for v in value)
    return False


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table  # noqa: PLC0415  # only the commands that print one

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console().print(table)


def console() -> Console:
    """A terminal's own width; piped into a file or another program, wide enough that
    nothing is cut (Rich would assume 80 columns)."""
    from rich.console import Console  # noqa: PLC0415  # only the commands that print

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=200)


NO_REQUEST: Any = object()
"""``ipc call`` was given no request."""


@dataclass(frozen=True, slots=True)
class Call:
    """What ``ipc call`` calls."""

    target: str
    request: Any
    resource_id: str | None
    timeout: float
    call_id: str | None
    direct: bool
    check: bool

    async def run(self, client: IPCClient, admin_timeout: float) -> Any:
        """Check the request against the method's contract, then call.

        Raises:
            InvalidArgumentError: the request fits no registered request schema, or there
                is none and the method takes one (exit 2, nothing sent).
        """
        request = self.request
        versions: list[ContractVersion] = []
        if self.check or request is NO_REQUEST:
            versions = await contract_of(client, self.target, admin_timeout)
        if request is NO_REQUEST:
            request = _empty_request(self.target, versions)
        if self.check:
            problem = request_problem(self.target, versions, request)
            if problem is not None:
                raise InvalidArgumentError(problem)  # exit 2, nothing sent
        return await client.call(
            self.target,
            request,
            resource_id=self.resource_id,
            timeout=self.timeout,
            call_id=self.call_id,
            durable=False if self.direct else None,
        )


def _empty_request(target: str, versions: list[ContractVersion]) -> Any:
    """The request of a method that takes none (its registered request schema has no
    property): ``{}`` for an object, else null.

    Raises:
        InvalidArgumentError: the method takes a request, or it registered no contract.
    """
    schemas = [v.request for v in versions if v.request is not None]
    if schemas and all(not s.get("properties") and not s.get("required") for s in schemas):
        return {} if schemas[0].get("type") == "object" else None
    why = "its request" if schemas else "a request ('null' if it takes none)"
    raise InvalidArgumentError(
        f"{target} needs {why} as JSON after the target; see 'ipc call --example {target}'"
    )


async def contract_of(client: IPCClient, target: str, timeout: float) -> list[ContractVersion]:
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


async def example_of(client: IPCClient, target: str, settings: Settings) -> Any:
    service, dot, method = target.partition(".")
    if not dot:
        raise InvalidArgumentError(f"target must be 'service.method', got {target!r}")
    found = await client.admin.describe(service, method, timeout=settings.timeout)
    contract = found.methods[0].contract if found.methods else None
    if contract is None or contract.request is None:
        why = "schemas were too large to register" if contract else "instances registered none"
        raise IPCError(f"{target} has no request schema to build an example from (its {why})")
    return example(contract.request)


async def watch(settings: Settings, kinds: list[str]) -> None:
    """Print the router's events of ``kinds`` until a signal or a lost connection."""
    client = client_for(settings, "ipc-cli-watch")
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
            await until(stop, print_events(events, settings.json))
    finally:
        await client.close(timeout=0.5)


async def print_events(events: RouterEvents, as_json: bool) -> None:
    async for event in events:
        typer.echo(event_line(event, as_json))
        sys.stdout.flush()


async def until(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
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


def event_line(event: RouterEvent, as_json: bool) -> str:
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


def status_text(s: RouterStatus) -> str:
    """The router's status as aligned ``field  value`` lines under a title: plain text,
    so that ``ipc status`` (typed dozens of times a day) does not load Rich."""
    nats = s.nats
    rows = [
        ("router id", s.router_id),
        ("version", f"{s.version} (protocol v{s.protocol_version})"),
        ("subject prefix", s.subject_prefix),
        ("started", s.started_at.isoformat(timespec="seconds")),
        ("uptime", _duration(s.uptime_s)),
        ("nats server", f"{nats.server_name or '-'} v{nats.version or '?'}"),
        ("nats url", nats.connected_url or "-"),
        ("nats cluster", nats.cluster or "-"),
        ("jetstream", "enabled" if nats.jetstream else "DISABLED"),
        ("embedded nats", "yes" if nats.embedded else "no"),
        ("routing", _routing_role(s.leader)),
        ("services", str(s.services)),
        ("instances", str(s.instances)),
    ]
    width = max(len(field) for field, _ in rows)
    return "\n".join(["AegisIPC router", *(f"  {f:<{width}}  {v}" for f, v in rows)])


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
