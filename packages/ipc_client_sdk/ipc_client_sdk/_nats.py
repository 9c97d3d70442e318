"""Opening and closing a NATS connection without nats-py's sharp edges.

- nats-py's first ``connect()`` retries for minutes (60 attempts, 2 s apart) when no server
  answers; here the whole first connect is bounded by ``connect_timeout``.
- Once connected, the connection reconnects forever: a trading process should ride out a
  NATS restart, not die of it.
- ``drain()`` raises while the client reconnects and after it closed; ``close_nats`` drains
  when it can, closes otherwise, and never raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NATS

from ipc_client_sdk._errors import IPCConnectionError

DEFAULT_SERVERS = "nats://127.0.0.1:4222"

_log = logging.getLogger("ipc_client_sdk.nats")


def parse_servers(servers: str | Sequence[str]) -> list[str]:
    """NATS URLs from one URL, a comma-separated list, or a sequence of URLs.

    Raises:
        ValueError: no URL at all.
    """
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    urls = [s.strip() for s in items if s.strip()]
    if not urls:
        raise ValueError("servers must name at least one NATS URL")
    return urls


def redact_url(url: str) -> str:
    """``url`` without credentials, for logs, messages and status output."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def servers_label(servers: str | Sequence[str]) -> str:
    """Servers as one string without credentials, for messages."""
    return ",".join(redact_url(u) for u in parse_servers(servers))


async def open_nats(
    servers: str | Sequence[str],
    *,
    name: str | None,
    connect_timeout: float = 2.0,
    logger: logging.Logger = _log,
    on_closed: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Connect to NATS within ``connect_timeout`` seconds.

    Args:
        servers: one URL, a comma-separated list, or a sequence of URLs.
        on_closed: called when the connection is closed for good (by ``close()``, or by
            nats-py after a server error it does not reconnect from).

    Raises:
        IPCConnectionError: no server could be reached in time, or a URL is invalid.
        ValueError: ``servers`` names no URL.
    """
    urls = parse_servers(servers)
    label = servers_label(urls)
    # nats-py gives each server the whole connect_timeout (twice: TCP, then INFO) and
    # shuffles the list, so one frozen node could eat the budget; split it instead.
    per_server = max(0.2, connect_timeout / len(urls))
    nc = NATS()

    async def on_error(e: Exception) -> None:
        logger.debug("nats error on %s: %s", label, e)

    async def on_disconnected() -> None:
        if not nc.is_closed:
            logger.warning("disconnected from NATS (%s); reconnecting", label)

    async def on_reconnected() -> None:
        url = nc.connected_url
        where = f"{url.hostname}:{url.port}" if url else label
        logger.warning("reconnected to NATS at %s", where)

    try:
        await asyncio.wait_for(
            nc.connect(
                servers=urls,
                name=name,
                # nats-py annotates int but hands it to asyncio.wait_for: a float works.
                connect_timeout=per_server,  # type: ignore[arg-type]
                reconnect_time_wait=1,
                max_reconnect_attempts=-1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed,
            ),
            timeout=connect_timeout,
        )
    except (TimeoutError, OSError, nats.errors.Error, ValueError) as e:
        last = nc.last_error
        await _close_quietly(nc)
        if isinstance(e, TimeoutError):  # say what the last attempt ran into, if anything
            reason = str(last) if last else f"no answer within {connect_timeout:g}s"
        else:
            reason = str(e) or type(e).__name__
        raise IPCConnectionError(label, reason) from e
    return nc


def connection_error(servers: Sequence[str], error: BaseException) -> IPCConnectionError:
    """The SDK's error for a nats-py failure of an open connection (closed, draining...)."""
    return IPCConnectionError(servers_label(servers), str(error) or type(error).__name__)


async def close_nats(nc: NATS, *, timeout: float = 5.0) -> None:
    """Drain the connection (finish in-flight handlers, flush publishes), then close it.

    Falls back to a plain close when draining is impossible or too slow. Never raises.
    """
    if nc.is_closed:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except (TimeoutError, nats.errors.Error, OSError) as e:
        _log.debug("drain failed (%s); closing", e)
    try:  # close flushes: bounded too, a frozen server must not hold us
        await asyncio.wait_for(_close_quietly(nc), max(0.5, deadline - loop.time()))
    except TimeoutError:
        _log.debug("close did not finish in time; abandoning the connection")


async def _close_quietly(nc: NATS) -> None:
    try:
        await nc.close()
    # Best effort, and nats-py asserts (AssertionError) when closing a client whose
    # connect() failed before it set itself up.
    except Exception as e:
        _log.debug("close failed: %s", e)
