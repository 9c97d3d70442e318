"""Opening and closing a NATS connection without nats-py's sharp edges.

- nats-py's first ``connect()`` retries for minutes (60 attempts, 2 s apart) when no server
  answers; here the whole first connect is bounded by ``connect_timeout``.
- Once connected, the connection reconnects forever: a trading process should ride out a
  NATS restart, not die of it.
- ``drain()`` raises while the client reconnects and after it closed; ``close_nats`` drains
  when it can, closes otherwise, and never raises.
- nats-py retries a server that refuses the credentials like one that is down; here the
  first connect fails at once with ``AuthenticationError``. Credentials travel as options
  (see ``_credentials``), so every node of a cluster gets them on a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NATS

from ipc_client_sdk._credentials import Credentials, lift_url_credentials
from ipc_client_sdk._errors import AuthenticationError, IPCConnectionError
from ipc_client_sdk._permissions import Permissions

DEFAULT_SERVERS = "nats://127.0.0.1:4222"

NO_CREDENTIALS_HINT = (
    "no credentials were given: set IPC_NATS_NKEY, IPC_NATS_CREDS, "
    "IPC_NATS_USER and IPC_NATS_PASSWORD, or IPC_NATS_TOKEN"
)

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


def refusal(error: BaseException) -> str | None:
    """Why the server refused this client's identity, or None for any other error.

    nats-py reports a refusal as a plain ``nats.errors.Error`` carrying the server's
    ``-ERR`` text during a connect, or as ``AuthorizationError`` later; an untrusted server
    certificate is an ``ssl.SSLCertVerificationError``.
    """
    if isinstance(error, nats.errors.AuthorizationError):
        return "authorization violation"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: {error.verify_message or 'certificate verify failed'}"
    text = str(error)
    if "authorization violation" in text.lower() or "authentication" in text.lower():
        return text.removeprefix("nats: ").strip("' ")
    return None


async def open_nats(
    servers: str | Sequence[str],
    *,
    name: str | None,
    credentials: Credentials | None = None,
    connect_timeout: float = 2.0,
    logger: logging.Logger = _log,
    on_closed: Callable[[], Awaitable[None]] | None = None,
    permissions: Permissions | None = None,
) -> NATS:
    """Connect to NATS within ``connect_timeout`` seconds.

    Args:
        servers: one URL, a comma-separated list, or a sequence of URLs. Credentials in a
            URL are moved into the connect options (``lift_url_credentials``).
        credentials: how to authenticate (default: anonymous, plain NATS).
        on_closed: called when the connection is closed for good (by ``close()``, or by
            nats-py after a server error it does not reconnect from).
        permissions: the operations in flight to fail when NATS refuses one (a
            permissions violation); without it a violation is only logged.

    Raises:
        AuthenticationError: a server refused the credentials (at once), or a credentials
            file cannot be used.
        IPCConnectionError: no server could be reached in time, or a URL is invalid.
        InvalidArgumentError: credentials given twice (in a URL and as ``credentials``).
        ValueError: ``servers`` names no URL.
    """
    urls, creds = lift_url_credentials(parse_servers(servers), credentials or Credentials())
    label = servers_label(urls)
    options = creds.nats_options()
    # nats-py gives each server the whole connect_timeout (twice: TCP, then INFO) and
    # shuffles the list, so one frozen node could eat the budget; split it instead.
    per_server = max(0.2, connect_timeout / len(urls))
    nc = NATS()
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    # Nothing listens on any server: fail at once rather than retry for the whole timeout
    # (a server that is down answers a connect with a refusal; a silent one is waited for).
    nobody: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    refusals = 0  # consecutive TCP refusals in the first connect: each server once, in turn
    warned: set[str] = set()  # each kind of warning once per outage, not once per attempt

    async def on_error(e: Exception) -> None:
        nonlocal refusals
        if not refused.done() and not nobody.done():
            refusals = refusals + 1 if isinstance(e, ConnectionRefusedError) else 0
            if refusals >= len(urls):
                nobody.set_result(str(e) or "connection refused")
        reason = refusal(e)
        if reason is None:
            text = str(e)
            denied = permissions.violated(text) if permissions is not None else False
            if denied:
                # The refused operation raises PermissionDeniedError: that is the report.
                logger.debug("NATS refused an operation: %s", text.removeprefix("nats: "))
            elif "permissions violation" in text.lower() and len(warned) < 64:
                # Nobody awaits it (a heartbeat, a result write): say it, once per subject.
                if text not in warned:
                    warned.add(text)
                    logger.warning("NATS refused an operation: %s", text.removeprefix("nats: "))
            else:
                logger.debug("nats error on %s: %s", label, e)
        elif not refused.done():  # still in the first connect: give up at once
            refused.set_result(reason)
        elif "refused" not in warned:
            warned.add("refused")
            logger.warning("NATS (%s) refused the credentials: %s; retrying", label, reason)

    async def on_disconnected() -> None:
        if not nc.is_closed:
            logger.warning("disconnected from NATS (%s); reconnecting", label)

    async def on_reconnected() -> None:
        warned.discard("refused")
        url = nc.connected_url
        where = f"{url.hostname}:{url.port}" if url else label
        logger.warning("reconnected to NATS at %s", where)

    connecting: asyncio.Future[None] = asyncio.ensure_future(
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
            **options,
        )
    )
    try:
        first: set[asyncio.Future[Any]] = {connecting, refused, nobody}
        await asyncio.wait(first, timeout=connect_timeout, return_when=FIRST_COMPLETED)
        if not connecting.done():
            if nobody.done():
                raise IPCConnectionError(label, f"nothing listens ({nobody.result()})")
            if refused.done():
                hint = "" if creds.identity != "none" else f" ({NO_CREDENTIALS_HINT})"
                raise AuthenticationError(label, refused.result() + hint)
            raise TimeoutError
        connecting.result()  # raises what the connect raised
    except BaseException as e:
        last = nc.last_error
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        await _close_quietly(nc)
        if isinstance(e, IPCConnectionError):
            raise
        if isinstance(e, TimeoutError):  # say what the last attempt ran into, if anything
            reason = str(last) if last else f"no answer within {connect_timeout:g}s"
            raise IPCConnectionError(label, reason) from e
        if isinstance(e, OSError | nats.errors.Error | ValueError):
            raise IPCConnectionError(label, str(e) or type(e).__name__) from e
        raise
    finally:
        if not refused.done():
            refused.set_result("")  # connected: a later refusal (on a reconnect) only warns
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
