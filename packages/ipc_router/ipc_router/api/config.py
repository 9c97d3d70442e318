"""Router configuration: command-line flags, each with an environment variable fallback."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from ipc_client_sdk import Credentials, InvalidArgumentError
from ipc_client_sdk.protocol import (
    CREDENTIAL_ENV_VARS,
    DEFAULT_PREFIX,
    lift_url_credentials,
    parse_servers,
    validate_prefix,
)
from ipc_router.infrastructure.jetstream_setup import DEFAULT_LEASE_TTL, StorageLimits
from ipc_router.infrastructure.sizes import format_size, parse_size

DEFAULT_DATA_DIR = Path(".ipc")
DEFAULT_EMBEDDED_PORT = 4222
DEFAULT_METRICS_HOST = "127.0.0.1"
"""Seconds a dead leader's lease outlives it: with it, a standby router leads about 1.5 s
after the leader's kill -9, inside the SDK's default 5 s call timeout."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Everything the router needs to start.

    ``nats_url`` None means: run the bundled nats-server (embedded mode) on
    ``embedded_host:embedded_port`` with its data under ``data_dir``. ``credentials`` are
    how the router authenticates to NATS (none by default; ``repr()`` hides secrets).
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
    lease_ttl: float = DEFAULT_LEASE_TTL
    log_level: str = "INFO"
    credentials: Credentials = field(default_factory=Credentials)
    limits: StorageLimits = field(default_factory=StorageLimits)
    """Caps on the router's streams and buckets (``--*-max-bytes``, ``--*-max-msgs``)."""
    metrics_port: int | None = None
    """The HTTP port of ``/metrics``, ``/healthz`` and ``/readyz``; None: not served."""
    metrics_host: str = DEFAULT_METRICS_HOST
    """The address that port listens on."""

    def __post_init__(self) -> None:
        if not self.router_id:
            object.__setattr__(self, "router_id", default_router_id())


def default_router_id() -> str:
    """``router-<host>-<4 hex>``: readable, and unique among routers on one host."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"router-{host}-{secrets.token_hex(2)}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _heartbeat_timeout(text: str) -> float:
    value = _positive_float(text)
    if not 0.3 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be between 0.3 and 60 seconds, got {text}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_LIMIT_HELP = {
    "calls_max_bytes": "the calls stream; full: a new call is refused (the caller gets "
    "StoreFullError), an accepted one is never dropped",
    "calls_max_msgs": "calls waiting in the calls stream; full: as above",
    "events_max_bytes": "the events stream; full: the oldest events are discarded",
    "events_max_msgs": "events kept; full: the oldest are discarded",
    "dead_letters_max_bytes": "the dead-letter stream; full: the oldest are discarded",
    "dead_letters_max_msgs": "dead letters kept; full: the oldest are discarded",
    "registry_max_bytes": "the registry bucket; full: new instances are not saved",
    "contracts_max_bytes": "the contracts bucket; full: new instances' method contracts are "
    "not saved (they are registered all the same)",
    "routes_max_bytes": "the routes bucket; full: new claims and assignments are not saved",
    "leases_max_bytes": "the router lease bucket",
    "results_max_bytes": "the results bucket; full: new calls are refused unrun "
    "(StoreFullError), never run twice",
    "max_message_size": "the largest call, event or result a stream or bucket stores",
}


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """``--calls-max-bytes`` ... ``--max-message-size``: one flag and one environment
    variable (``IPC_CALLS_MAX_BYTES`` ...) per ``StorageLimits`` field."""
    defaults = StorageLimits()
    group = p.add_argument_group(
        "storage limits",
        "caps on the router's JetStream streams and buckets; sizes in bytes or with a unit "
        "(512MiB, 2GiB; KB/MB/GB are powers of 1000). Their sum is reserved in JetStream "
        "and must fit nats-server's max_file_store",
    )
    for f in fields(StorageLimits):
        default = getattr(defaults, f.name)
        is_size = not f.name.endswith("_msgs")
        env_name = f"IPC_{f.name.upper()}"
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_size if is_size else _positive_int,
            metavar="SIZE" if is_size else "COUNT",
            default=os.environ.get(env_name) or str(default),
            help=f"{_LIMIT_HELP[f.name]} (env {env_name}, default "
            f"{format_size(default) if is_size else default})",
        )


def _lease_ttl(text: str) -> float:
    value = _positive_float(text)
    if not 0.5 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be between 0.5 and 60 seconds, got {text}")
    return value


def _prefix(text: str) -> str:
    try:
        return validate_prefix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``ipc-router`` command line."""
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="ipc-router",
        description=(
            "AegisIPC router: service registry, routing and failover on NATS JetStream. "
            "With no NATS URL it starts the bundled nats-server itself."
        ),
    )
    p.add_argument(
        "--nats-url",
        default=env("IPC_NATS_URL") or None,
        help="NATS server URL(s), comma-separated (env IPC_NATS_URL). "
        "Unset: run the bundled nats-server.",
    )
    p.add_argument(
        "--prefix",
        type=_prefix,
        default=env("IPC_SUBJECT_PREFIX", DEFAULT_PREFIX),
        help="subject prefix (env IPC_SUBJECT_PREFIX, default %(default)s)",
    )
    p.add_argument(
        "--router-id",
        default=env("IPC_ROUTER_ID", ""),
        help="env IPC_ROUTER_ID; default: generated",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("IPC_DATA_DIR", str(DEFAULT_DATA_DIR))),
        help="embedded nats-server data folder (env IPC_DATA_DIR, default %(default)s)",
    )
    p.add_argument("--embedded-host", default="127.0.0.1", help="embedded nats-server address")
    p.add_argument(
        "--embedded-port",
        type=_positive_int,
        default=env("IPC_EMBEDDED_PORT", str(DEFAULT_EMBEDDED_PORT)),
        help="embedded nats-server client port (env IPC_EMBEDDED_PORT, default %(default)s)",
    )
    p.add_argument(
        "--replicas",
        type=_positive_int,
        default=env("IPC_REPLICAS", "1"),
        help="JetStream replicas of the router's streams and buckets (3 on a 3-node cluster)",
    )
    _add_limit_flags(p)
    p.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=env("IPC_CONNECT_TIMEOUT", "5"),
        help="seconds to reach NATS at start (env IPC_CONNECT_TIMEOUT, default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=_heartbeat_timeout,
        default=env("IPC_HEARTBEAT_TIMEOUT", "1.5"),
        help="seconds without a heartbeat before an instance is unhealthy and its roles fail "
        "over; instances fence themselves after 0.8 of it (0.3 to 60; env "
        "IPC_HEARTBEAT_TIMEOUT, default %(default)s)",
    )
    p.add_argument(
        "--call-ack-wait",
        type=_positive_float,
        default=env("IPC_CALL_ACK_WAIT", "1"),
        help="seconds before a call taken by a router that died is delivered again; calls "
        "in hand longer are kept alive (env IPC_CALL_ACK_WAIT, default %(default)s)",
    )
    p.add_argument(
        "--lease-ttl",
        type=_lease_ttl,
        default=env("IPC_LEASE_TTL", str(DEFAULT_LEASE_TTL)),
        help="seconds the router leadership lease lives without renewal: a standby leads "
        "about this long after the leader dies. Set when the leases bucket is created "
        "(0.5 to 60; env IPC_LEASE_TTL, default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default=env("IPC_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
    )
    _add_credential_flags(p)
    _add_metrics_flags(p)
    return p


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def _add_metrics_flags(p: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-host``: the HTTP port of the metrics and probes."""
    env = os.environ.get
    group = p.add_argument_group(
        "metrics and health probes",
        "an HTTP port serving /metrics (Prometheus), /healthz and /readyz",
    )
    group.add_argument(
        "--metrics-port",
        type=_port,
        default=env("IPC_METRICS_PORT") or None,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port (env IPC_METRICS_PORT; "
        "default: off)",
    )
    group.add_argument(
        "--metrics-host",
        default=env("IPC_METRICS_HOST", DEFAULT_METRICS_HOST),
        metavar="HOST",
        help="address of the metrics port (env IPC_METRICS_HOST, default %(default)s: this "
        "machine only; 0.0.0.0 in a container)",
    )


_CREDENTIAL_FLAGS = (
    ("--nats-nkey", "nkey_seed_file", "FILE", "NKey seed file to authenticate with"),
    ("--nats-creds", "creds_file", "FILE", "NATS .creds file (user JWT and seed)"),
    ("--nats-user", "user", "NAME", "user name (with a password)"),
    ("--nats-password", "password", "SECRET", "password; prefer the variable: flags show in ps"),
    ("--nats-token", "token", "SECRET", "token; prefer the variable: flags show in ps"),
    ("--tls-ca", "tls_ca", "FILE", "PEM bundle of the CAs that sign the NATS servers' certs"),
    ("--tls-cert", "tls_cert", "FILE", "PEM client certificate (with --tls-key)"),
    ("--tls-key", "tls_key", "FILE", "PEM key of the client certificate"),
)
"""(flag, ``Credentials`` field, metavar, help): one identity at most, plus TLS."""


def _add_credential_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "NATS credentials",
        "At most one identity (NKey, .creds, user and password, or token), plus TLS. "
        "Each flag falls back to its variable; the help never shows a value.",
    )
    for flag, name, metavar, text in _CREDENTIAL_FLAGS:
        group.add_argument(
            flag,
            dest=f"cred_{name}",
            metavar=metavar,
            default=None,
            help=f"{text} (env {CREDENTIAL_ENV_VARS[name]})",
        )


def _credentials(
    p: argparse.ArgumentParser, ns: argparse.Namespace
) -> tuple[str | None, Credentials]:
    """The NATS URL without credentials, and the credentials from flags, variables and the
    URL (moved out of it so that every cluster node gets them; see ``Credentials``)."""
    given = {name: getattr(ns, f"cred_{name}") for _, name, _, _ in _CREDENTIAL_FLAGS}
    try:
        credentials = Credentials.from_env(**given)
        if ns.nats_url is None:
            return None, credentials
        urls, credentials = lift_url_credentials(parse_servers(ns.nats_url), credentials)
    except (InvalidArgumentError, ValueError) as e:
        p.error(e.message if isinstance(e, InvalidArgumentError) else str(e))
    return ",".join(urls), credentials


def parse_config(argv: Sequence[str] | None = None) -> RouterConfig:
    """Parse the command line (exits with status 2 and one message on bad input)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    nats_url, credentials = _credentials(parser, ns)
    try:
        limits = StorageLimits(**{f.name: getattr(ns, f.name) for f in fields(StorageLimits)})
    except ValueError as e:
        parser.error(str(e))
    return RouterConfig(
        nats_url=nats_url,
        prefix=ns.prefix,
        router_id=ns.router_id,
        data_dir=ns.data_dir,
        embedded_host=ns.embedded_host,
        embedded_port=ns.embedded_port,
        replicas=ns.replicas,
        connect_timeout=ns.connect_timeout,
        heartbeat_timeout=ns.heartbeat_timeout,
        call_ack_wait=ns.call_ack_wait,
        lease_ttl=ns.lease_ttl,
        log_level=ns.log_level,
        credentials=credentials,
        limits=limits,
        metrics_port=ns.metrics_port,
        metrics_host=ns.metrics_host,
    )
