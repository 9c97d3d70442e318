"""Router configuration: command-line flags, each with an environment variable fallback."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ipc_client_sdk.protocol import DEFAULT_PREFIX, validate_prefix

DEFAULT_DATA_DIR = Path(".ipc")
DEFAULT_EMBEDDED_PORT = 4222
DEFAULT_LEASE_TTL = 1.0
"""Seconds a dead leader's lease outlives it: with it, a standby router leads about 1.5 s
after the leader's kill -9, inside the SDK's default 5 s call timeout."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Everything the router needs to start.

    ``nats_url`` None means: run the bundled nats-server (embedded mode) on
    ``embedded_host:embedded_port`` with its data under ``data_dir``.
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
    return p


def parse_config(argv: Sequence[str] | None = None) -> RouterConfig:
    """Parse the command line (exits with status 2 and one message on bad input)."""
    ns = build_parser().parse_args(argv)
    return RouterConfig(
        nats_url=ns.nats_url,
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
    )
