"""Router configuration: flags, environment variables and a TOML file, merged by
pydantic-settings from the declarations in ``settings.py``.

Precedence: a flag, then its environment variable, then its key in the config file
(``--config FILE`` or ``IPC_CONFIG``), then the default. Bad input of any source exits 2
with one line naming the flag, variable or key.
"""

from __future__ import annotations

import argparse
import difflib
import os
import secrets
import socket
import stat
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import TypeAdapter, ValidationError

from ipc_client_sdk import Credentials, InvalidArgumentError
from ipc_client_sdk.protocol import (
    DEFAULT_PREFIX,
    AuthDir,
    AuthDirError,
    lift_url_credentials,
    parse_servers,
)
from ipc_router import __version__
from ipc_router.api.settings import (
    CONFIG_FILE,
    DEFAULT_DATA_DIR,
    DEFAULT_EMBEDDED_PORT,
    DEFAULT_METRICS_HOST,
    GROUP_HELP,
    RouterSettings,
    env_var,
    option,
    shown_default,
)
from ipc_router.infrastructure.jetstream_setup import DEFAULT_LEASE_TTL, StorageLimits

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_EMBEDDED_PORT",
    "ConfigError",
    "RouterConfig",
    "build_parser",
    "default_router_id",
    "load_settings",
    "parse_config",
]

CONFIG_ENV = "IPC_CONFIG"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Everything the router needs to start.

    ``nats_url`` None means: run the bundled nats-server (embedded mode) on
    ``embedded_host:embedded_port`` with its data under ``data_dir``. ``credentials`` are
    how the router authenticates to NATS (none by default; ``repr()`` hides secrets).
    ``auth_dir``: an ``ipc auth`` directory; the embedded server then admits only its
    identities, with their permissions (and ``credentials`` are its ``router.nk``).
    ``warnings`` are said once logging is set up (a secret in a file others can read).
    """

    nats_url: str | None
    prefix: str = DEFAULT_PREFIX
    router_id: str = ""
    data_dir: Path = DEFAULT_DATA_DIR
    embedded_host: str = "127.0.0.1"
    embedded_port: int = DEFAULT_EMBEDDED_PORT
    replicas: int = 1
    connect_timeout: float = 5.0
    heartbeat_timeout: float = 1.5
    call_ack_wait: float = 1.0
    standby_routing: bool = True
    """Standby routers route calls too (``--standby-routing``)."""
    lease_ttl: float = DEFAULT_LEASE_TTL
    log_level: str = "INFO"
    log_format: str = "text"
    credentials: Credentials = field(default_factory=Credentials)
    limits: StorageLimits = field(default_factory=StorageLimits)
    """Caps on the router's streams and buckets (``--*-max-bytes``, ``--*-max-msgs``)."""
    auth_dir: Path | None = None
    metrics_port: int | None = None
    """The HTTP port of ``/metrics``, ``/healthz`` and ``/readyz``; None: not served."""
    metrics_host: str = DEFAULT_METRICS_HOST
    """The address that port listens on."""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.router_id:
            object.__setattr__(self, "router_id", default_router_id())


def default_router_id() -> str:
    """``router-<host>-<4 hex>``: readable, and unique among routers on one host."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"router-{host}-{secrets.token_hex(2)}"


class ConfigError(ValueError):
    """A setting that is wrong, with the flag, variable or file key that gave it."""


_FIELDS = RouterSettings.model_fields


def _flag_type(name: str) -> Any:
    """Validates a flag's text as its field would, so that ``--help`` parses to typed
    values and a bad flag is refused by argparse with the flag's name."""
    info = _FIELDS[name]
    annotation: Any = info.annotation
    if info.metadata:
        annotation = Annotated[annotation, *info.metadata]
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)

    def convert(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(_reason(e.errors()[0])) from None
        except ValueError as e:  # a validator's own (a size, a prefix)
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name  # argparse names it in "invalid <name> value"
    return convert


def _reason(error: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{message} (got {error['input']!r})" if isinstance(error["input"], str) else message


class _Parser(argparse.ArgumentParser):
    """Says a usage error in one line (the usage itself is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _metavar(name: str) -> str:
    """A value's name in ``--help``: what it is rather than the field's name."""
    info = _FIELDS[name]
    given = option(name, info, "metavar")
    if given:
        return str(given)
    choices = typing.get_args(info.annotation)
    if typing.get_origin(info.annotation) is typing.Literal:
        return "{" + ",".join(map(str, choices)) + "}"
    kinds = {float: "SECONDS", Path: "DIR"}
    for kind in (info.annotation, *choices):
        if typing.get_origin(kind) is Annotated:
            kind = typing.get_args(kind)[0]
        if kind in kinds:
            return kinds[kind]
        if kind is int:
            return "SIZE" if name.endswith(("_bytes", "_size")) else "N"
    return name.split("_")[-1].upper()


def build_parser() -> argparse.ArgumentParser:
    """The ``ipc-router`` command line: one flag per ``RouterSettings`` field (absent from
    the namespace unless given, so that the environment and the file can fill it),
    ``--config`` and ``--version``."""
    p = _Parser(
        prog="ipc-router",
        description=(
            "AegisIPC router: service registry, routing and failover on NATS JetStream. "
            "With no NATS URL it starts the bundled nats-server itself."
        ),
        epilog=(
            "Each flag has an environment variable and a key in the config file (the flag "
            "without its dashes, in snake_case: --calls-max-bytes is calls_max_bytes). "
            "Precedence: flag > environment variable > config file > default."
        ),
    )
    p.add_argument("--version", action="version", version=f"ipc-router {__version__}")
    p.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"TOML file with any of the settings below as keys (env {CONFIG_ENV})",
    )
    groups: dict[str, Any] = {}
    for name, info in _FIELDS.items():
        group_name = option(name, info, "group")
        target: Any = p
        if group_name:
            if group_name not in groups:
                groups[group_name] = p.add_argument_group(group_name, GROUP_HELP[group_name])
            target = groups[group_name]
        default = shown_default(name, info)
        text = f"{info.description} (env {env_var(info)}"
        target.add_argument(
            option(name, info, "flag"),
            dest=name,
            type=_flag_type(name),
            metavar=_metavar(name),
            default=argparse.SUPPRESS,
            help=(text + (f", default {default})" if default else ")")).replace("%", "%%"),
        )
    return p


def load_settings(flags: Mapping[str, Any], config_file: Path | None) -> RouterSettings:
    """The settings from ``flags``, the environment and ``config_file``, in that order.

    Raises:
        ConfigError: the file cannot be read, has an unknown key, or a value is wrong.
    """
    file_data = _read_file(config_file) if config_file is not None else {}
    token = CONFIG_FILE.set(config_file)
    try:
        return RouterSettings(**flags)
    except ValidationError as e:
        error = e.errors()[0]
        raise ConfigError(
            _where(str(error["loc"][0]), flags, file_data, config_file) + ": " + _reason(error)
        ) from None
    except ValueError as e:  # a validator's own, outside pydantic's error wrapping
        raise ConfigError(str(e)) from None
    finally:
        CONFIG_FILE.reset(token)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read the config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not TOML: {e}") from None
    for key in data:
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {key!r} in {path}{hint}")
    return data


def _where(
    name: str, flags: Mapping[str, Any], file_data: Mapping[str, Any], path: Path | None
) -> str:
    """Which source gave the setting ``name`` (a field name or its variable)."""
    for field_name, info in _FIELDS.items():
        env = env_var(info)
        if name not in (field_name, env):
            continue
        if field_name in flags:
            return str(option(field_name, info, "flag"))
        if os.environ.get(env):
            return env
        if field_name in file_data:
            return f"{field_name} in {path}"
        return field_name
    return name


def secret_warnings(config_file: Path | None) -> tuple[str, ...]:
    """A warning when the config file holds a secret and others may read it."""
    if config_file is None:
        return ()
    try:
        data = tomllib.loads(config_file.read_text())
        mode = config_file.stat().st_mode
    except (OSError, tomllib.TOMLDecodeError):
        return ()
    held = [k for k in data if k in _FIELDS and option(k, _FIELDS[k], "secret")]
    if not held or not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return ()
    return (
        f"{config_file} holds {' and '.join(held)} and others may read it (mode "
        f"{stat.S_IMODE(mode):o}): chmod 600 it, or give the secret in its variable",
    )


def to_config(settings: RouterSettings, warnings: tuple[str, ...] = ()) -> RouterConfig:
    """The ``RouterConfig`` of merged settings.

    Raises:
        ConfigError: the credentials conflict, a URL is bad, or a storage cap cannot hold
            one message.
    """
    try:
        credentials = Credentials(
            nkey_seed_file=settings.nats_nkey,
            creds_file=settings.nats_creds,
            user=settings.nats_user,
            password=settings.nats_password,
            token=settings.nats_token,
            tls_ca=settings.tls_ca,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
        )
        nats_url = settings.nats_url or None
        if nats_url is not None:
            urls, credentials = lift_url_credentials(parse_servers(nats_url), credentials)
            nats_url = ",".join(urls)
        limits = settings.storage_limits()
    except InvalidArgumentError as e:
        raise ConfigError(e.message) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    prefix, host, port = settings.prefix, settings.embedded_host, settings.embedded_port
    if settings.auth_dir is not None:
        prefix, host, port, credentials = _apply_auth_dir(settings, credentials)
    return RouterConfig(
        nats_url=nats_url,
        prefix=prefix,
        router_id=settings.router_id,
        data_dir=settings.data_dir,
        embedded_host=host,
        embedded_port=port,
        replicas=settings.replicas,
        connect_timeout=settings.connect_timeout,
        heartbeat_timeout=settings.heartbeat_timeout,
        call_ack_wait=settings.call_ack_wait,
        standby_routing=settings.standby_routing == "on",
        lease_ttl=settings.lease_ttl,
        log_level=settings.log_level,
        log_format=settings.log_format,
        credentials=credentials,
        limits=limits,
        auth_dir=settings.auth_dir,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        warnings=warnings,
    )


def _apply_auth_dir(
    settings: RouterSettings, credentials: Credentials
) -> tuple[str, str, int, Credentials]:
    """``--auth-dir``: its prefix and address stand where no setting gave one, and the
    router connects as its ``router.nk`` (TLS settings kept).

    Raises:
        ConfigError: the folder is unreadable, another identity is given, or another
            prefix is.
    """
    assert settings.auth_dir is not None
    auth = AuthDir(settings.auth_dir)
    try:
        manifest = auth.load()
    except AuthDirError as e:
        raise ConfigError(str(e)) from None
    if credentials.identity != "none":
        raise ConfigError(
            f"--auth-dir connects as {auth.seed_file('router')}; give no other identity"
        )
    given = settings.model_fields_set
    if "prefix" in given and settings.prefix != manifest.prefix:
        raise ConfigError(
            f"--auth-dir {settings.auth_dir} is for prefix {manifest.prefix!r}, not "
            f"{settings.prefix!r}: its permissions would not fit"
        )
    host = settings.embedded_host if "embedded_host" in given else manifest.host
    port = settings.embedded_port if "embedded_port" in given else manifest.port
    return (
        manifest.prefix,
        host,
        port,
        replace(credentials, nkey_seed_file=auth.seed_file("router")),
    )


def parse_config(argv: Sequence[str] | None = None) -> RouterConfig:
    """Parse the command line, the environment and the config file (exits with status 2
    and one message on bad input)."""
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    config_file: Path | None = flags.pop("config", None)
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    try:
        settings = load_settings(flags, config_file)
        return to_config(settings, secret_warnings(config_file))
    except ConfigError as e:
        parser.error(str(e))
