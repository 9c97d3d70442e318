"""``ipc``: the operators' command line. Talks to the router through the SDK only.

This module declares the commands and imports only Typer: a command imports what it runs
(``_ops``: the SDK, Rich) when it runs, so that ``ipc --help`` and usage errors start fast.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

from ipc_cli import __version__
from ipc_cli._defaults import CREDENTIAL_ENV_VARS, DEFAULT_PREFIX, DEFAULT_SERVERS, EVENT_KINDS
from ipc_cli._exit import ExitCode, fail

if TYPE_CHECKING:
    from ipc_client_sdk import Credentials

app = typer.Typer(
    name="ipc",
    help="AegisIPC operators' tool: inspect and steer the router over its admin subjects.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain Click help: Rich is not imported for --help
    pretty_exceptions_enable=False,
)

_fail = fail  # the name the command modules use


@dataclass(frozen=True, slots=True)
class Settings:
    """Global options, shared by every command."""

    nats_url: str
    timeout: float
    json: bool
    prefix: str
    given_credentials: dict[str, str | None] = dataclasses.field(default_factory=dict)
    """Credential flags as given (None: not given, its variable applies)."""

    def credentials(self) -> Credentials:
        """The credentials from the flags and the ``IPC_NATS_*``/``IPC_TLS_*`` variables,
        as the SDK and the router read them.

        Raises:
            InvalidArgumentError: they conflict (exit 2 through ``_ops.guarded``).
        """
        from ipc_client_sdk import Credentials  # noqa: PLC0415  # see the module docstring

        return Credentials.from_env(None, **self.given_credentials)


def _positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be positive, got {value}")
    return value


def _prefix(value: str) -> str:
    if value == DEFAULT_PREFIX:
        return value  # valid, and checked without loading the SDK
    from ipc_client_sdk.protocol import validate_prefix  # noqa: PLC0415

    try:
        return validate_prefix(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ipc {__version__}")
        raise typer.Exit()


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
    )


@app.callback()
def _global(
    ctx: typer.Context,
    nats_url: str = typer.Option(
        DEFAULT_SERVERS,
        "--nats-url",
        envvar="IPC_NATS_URL",
        metavar="URL",
        help="NATS server URL(s), comma-separated.",
    ),
    timeout: float = typer.Option(
        5.0,
        "--timeout",
        callback=_positive,
        metavar="SECONDS",
        help="Seconds to connect to NATS and for the router to answer an admin request "
        "(a call's own limit is 'ipc call --call-timeout').",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (and only JSON) on stdout."),
    prefix: str = typer.Option(
        DEFAULT_PREFIX,
        "--prefix",
        envvar="IPC_SUBJECT_PREFIX",
        metavar="PREFIX",
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
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    ctx.obj = Settings(
        nats_url=nats_url,
        timeout=timeout,
        json=as_json,
        prefix=prefix,
        given_credentials={
            "nkey_seed_file": nats_nkey,
            "creds_file": nats_creds,
            "user": nats_user,
            "password": nats_password,
            "token": nats_token,
            "tls_ca": tls_ca,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
        },
    )


def _settings(ctx: typer.Context, as_json: bool) -> Settings:
    settings: Settings = ctx.obj
    if as_json and not settings.json:
        settings = dataclasses.replace(settings, json=True)
    return settings


def _progress_option() -> Any:
    return typer.Option(
        False,
        "--progress",
        help="Say on stderr what it waits for, each second (always when stderr is a terminal).",
    )


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print JSON (and only JSON) on stdout.")


@app.command()
def status(ctx: typer.Context, as_json: bool = _json_option()) -> None:
    """Show the router: identity, version, uptime, NATS server and counts."""
    settings = _settings(ctx, as_json)
    from ipc_cli import _ops  # noqa: PLC0415  # see _ops

    result = _ops.run(settings, lambda client, left: client.admin.status(timeout=left))
    if settings.json:
        _ops.print_json(result)
        return
    typer.echo(_ops.status_text(result))


@app.command()
def services(ctx: typer.Context, as_json: bool = _json_option()) -> None:
    """List the registered services: mode, active instance, instances, methods."""
    settings = _settings(ctx, as_json)
    from ipc_cli import _ops  # noqa: PLC0415  # see _ops

    found = _ops.run(settings, lambda client, left: client.admin.services(timeout=left))
    if settings.json:
        _ops.print_json(found)
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
    _ops.table(
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
    from ipc_cli import _ops  # noqa: PLC0415  # see _ops

    found = _ops.run(settings, lambda client, left: client.admin.instances(service, timeout=left))
    if settings.json:
        _ops.print_json(found)
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
    _ops.table("instances", [*columns, "owns", "standby for"], rows)


@app.command()
def routes(
    ctx: typer.Context,
    service: str | None = typer.Argument(None, help="Only this service's routes."),
    resource: str | None = typer.Option(None, "--resource", help="Only this resource."),
    as_json: bool = _json_option(),
) -> None:
    """Show where resources go: claims (owner, then standbys) and sticky assignments."""
    settings = _settings(ctx, as_json)
    from ipc_cli import _ops  # noqa: PLC0415  # see _ops

    found = _ops.run(
        settings,
        lambda client, left: client.admin.routes(service, resource=resource, timeout=left),
    )
    if settings.json:
        _ops.print_json(found)
        return
    rows = [
        [r.service, r.resource, r.kind, r.instance, ", ".join(r.standbys) or "-"] for r in found
    ]
    _ops.table("routes", ["service", "resource", "kind", "instance", "standbys"], rows)


@app.command()
def promote(
    ctx: typer.Context,
    service: str = typer.Argument(..., help="The service."),
    instance: str = typer.Argument(..., help="The instance to make active."),
    drain: float = typer.Option(
        10.0, "--drain", help="Seconds to wait for the calls in flight to the current active."
    ),
    progress: bool = _progress_option(),
    as_json: bool = _json_option(),
) -> None:
    """Make an instance the active of its service and of every resource it claims."""
    settings = _settings(ctx, as_json)
    from ipc_cli import _ops  # noqa: PLC0415  # see _ops

    waiting = f"promoting {service}/{instance}: waiting for the current active's calls"
    result = _ops.run(
        settings,
        lambda client, _: _ops.with_progress(
            client.admin.promote(service, instance, drain=drain), waiting, progress
        ),
        extra=drain + 10.0,
    )
    if settings.json:
        _ops.print_json(result)
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
    progress: bool = _progress_option(),
    as_json: bool = _json_option(),
) -> None:
    """Stop routing new calls to an instance, hand its roles to standbys, and report when
    its calls in flight are done."""
    settings = _settings(ctx, as_json)
    from ipc_cli import _ops  # noqa: PLC0415  # see _ops

    waiting = f"draining {instance}: waiting for its calls in flight to finish"
    result = _ops.run(
        settings,
        lambda client, _: _ops.with_progress(
            client.admin.drain(instance, service=service, wait=wait, cancel=cancel),
            waiting,
            progress and not cancel,
        ),
        extra=wait + 10.0,
    )
    name = f"{result.service}/{result.instance_id}"
    if settings.json:
        _ops.print_json(result)
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
    payload: str | None = typer.Argument(
        None,
        help="The request, as JSON. Required unless the method's contract takes none "
        "('null' sends null).",
        show_default=False,
    ),
    resource_id: str | None = typer.Option(None, "--resource-id", help="Route by resource."),
    call_timeout: float = typer.Option(
        10.0,
        "--call-timeout",
        "--timeout",
        callback=_positive,
        metavar="SECONDS",
        help="Seconds the call itself may take, handler included (the global 'ipc --timeout' "
        "is for connecting and admin requests).",
    ),
    call_id: str | None = typer.Option(None, "--call-id", help="Your id, for a safe retry."),
    caller: str = typer.Option(
        "ipc-cli",
        "--caller",
        envvar="IPC_CALLER",
        help="Who calls: the caller token of the call's subject. Under 'ipc auth' it must be "
        "the name of the service identity you connect as (NATS refuses any other).",
    ),
    direct: bool = typer.Option(
        False,
        "--direct",
        help="Straight to the instance, at most once (durable=False).",
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
    unchecked. With no request, the method must take none (its contract says so).
    """
    settings = _settings(ctx, as_json)
    from ipc_cli import _ops  # noqa: PLC0415  # see _ops

    if show_example:
        _ops.print_json(
            _ops.run(settings, lambda client, _: _ops.example_of(client, target, settings))
        )
        return
    if direct and call_id is not None:
        _fail("--call-id asks for exactly once, which --direct cannot give", ExitCode.USAGE)
    call = _ops.Call(
        target=target,
        request=_ops.NO_REQUEST if payload is None else _ops.parse_json(payload, "the request"),
        resource_id=resource_id,
        timeout=call_timeout,
        call_id=call_id,
        direct=direct,
        check=check,
    )
    result = _ops.run(
        settings,
        lambda client, _: call.run(client, settings.timeout),
        extra=call_timeout + 1.0,
        name=caller,
    )
    _ops.print_json(result)


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
    from ipc_cli import _ops  # noqa: PLC0415  # see _ops

    value = _ops.parse_json(event, "the event")
    sequence = _ops.run(
        settings,
        lambda client, left: client.publish(topic, value, event_id=event_id, timeout=left),
    )
    if settings.json:
        _ops.print_json({"topic": topic, "sequence": sequence})
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
    from ipc_cli import _ops  # noqa: PLC0415  # see _ops

    kinds = [k.strip() for k in kind.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(EVENT_KINDS))
    if not kinds or unknown:
        _fail(
            f"unknown event kind {', '.join(unknown) or repr(kind)} "
            f"(known: {', '.join(EVENT_KINDS)})",
            ExitCode.USAGE,
        )

    _ops.guarded(lambda: _ops.watch(settings, kinds))


def main() -> None:
    """Console entry point of ``ipc``: usage errors are one line too (exit 2); no command
    prints the help and exits 0."""
    if len(sys.argv) == 1:
        sys.argv.append("--help")  # Click's no_args_is_help exits 2 with an empty "error:"
    try:
        code = app(standalone_mode=False, prog_name="ipc")
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
from ipc_cli import stats as _stats_command  # noqa: E402, F401
