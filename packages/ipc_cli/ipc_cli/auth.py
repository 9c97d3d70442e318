"""``ipc auth``: write the NATS configuration and identities of a secured deployment.

``ipc auth init DIR`` creates the router and operator identities and ``DIR/nats.conf``;
``ipc auth add-service DIR NAME [--calls S ...]`` adds a service's identity (or changes
whom it may call) and rewrites the configuration. Seeds are never overwritten and never
printed. The permissions are ``ipc_client_sdk``'s model (``protocol.permissions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ipc_cli._exit import ExitCode, fail
from ipc_cli.main import _json_option, _settings, app

if TYPE_CHECKING:  # imported when a command runs: `ipc --help` loads no SDK
    from ipc_client_sdk.protocol import AuthDir, AuthManifest, Identity

auth_app = typer.Typer(
    help="Write the NATS configuration and NKey identities of a secured deployment.",
    no_args_is_help=True,
)
app.add_typer(auth_app, name="auth")


def _identity_json(auth: AuthDir, identity: Identity) -> dict[str, object]:
    return {
        "name": identity.name,
        "role": identity.role.value,
        "public_key": identity.public_key,
        "seed_file": str(auth.seed_file(identity.name)),
        "calls": None if identity.calls is None else list(identity.calls),
    }


def _summary(auth: AuthDir, manifest: AuthManifest) -> dict[str, object]:
    return {
        "dir": str(auth.path),
        "config": str(auth.config_file),
        "prefix": manifest.prefix,
        "listen": f"{manifest.host}:{manifest.port}",
        "identities": [_identity_json(auth, i) for i in manifest.identities],
    }


@auth_app.command("init")
def init(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., help="Folder to create the configuration in."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address nats-server listens on."),
    port: int = typer.Option(4222, "--port", min=1, max=65535, help="Its client port."),
    as_json: bool = _json_option(),
) -> None:
    """Create DIR/nats.conf and the router and operator identities (router.nk,
    operator.nk, mode 0600). Uses the global --prefix."""
    from ipc_cli._ops import print_json
    from ipc_client_sdk.protocol import AuthDir, AuthDirError, validate_prefix

    settings = _settings(ctx, as_json)
    auth = AuthDir(directory)
    try:
        manifest = auth.init(prefix=validate_prefix(settings.prefix), host=host, port=port)
    except AuthDirError as e:
        fail(str(e), ExitCode.FAILED)
    if settings.json:
        print_json(_summary(auth, manifest))
        return
    typer.echo(f"wrote {auth.config_file} (prefix {manifest.prefix!r}, {host}:{port})")
    for identity in manifest.identities:
        typer.echo(f"  {identity.role.value:<8} {auth.seed_file(identity.name)}")
    typer.echo(
        f"next: ipc auth add-service {directory} NAME; "
        f"ipc-router --auth-dir {directory} (or nats-server -c {auth.config_file})"
    )


@auth_app.command("add-service")
def add_service(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., help="A folder made by 'ipc auth init'."),
    name: str = typer.Argument(..., help="The service's name."),
    calls: list[str] = typer.Option(
        None,
        "--calls",
        help="A service it may call (repeat for more); none given: every service.",
    ),
    as_json: bool = _json_option(),
) -> None:
    """Add service NAME's identity (DIR/NAME.nk), or change whom it may call (its seed is
    kept), and rewrite DIR/nats.conf. A running nats-server picks the change up on
    'nats-server --signal reload' (or a restart)."""
    from ipc_cli._ops import print_json
    from ipc_client_sdk.protocol import AuthDir, AuthDirError

    settings = _settings(ctx, as_json)
    auth = AuthDir(directory)
    try:
        identity, created = auth.add_service(name, calls or None)
    except AuthDirError as e:
        fail(str(e), ExitCode.FAILED)
    if settings.json:
        print_json(_identity_json(auth, identity) | {"created": created})
        return
    callees = "every service" if identity.calls is None else ", ".join(identity.calls)
    verb = "added" if created else "updated (seed kept)"
    typer.echo(f"{verb} service {name}: {auth.seed_file(name)}; may call {callees}")
    typer.echo(f"run it with IPC_NATS_NKEY={auth.seed_file(name)}")
