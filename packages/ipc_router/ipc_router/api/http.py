"""The router's HTTP port (``--metrics-port``): ``/metrics``, ``/healthz`` and ``/readyz``.

A minimal HTTP/1.1 server on ``asyncio.start_server``, so that every request is answered
on the router's event loop, where its state is read safely (prometheus-client's own
server runs in a thread). One request per connection (``Connection: close``), GET and
HEAD only, the request head capped at 8 KiB and read within 5 s.

- ``/metrics``: the Prometheus text format (404 when the router keeps no Prometheus
  metrics);
- ``/healthz``: 200 while the process runs and its NATS connection is up, 503 otherwise;
- ``/readyz``: 200 when its JetStream streams and buckets exist and it leads, or is a
  standby that reaches the lease; 503 otherwise. A 503's body is one line saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol, runtime_checkable

from ipc_router.infrastructure.lifecycle import AsyncService

_log = logging.getLogger("ipc_router.http")

_MAX_HEAD = 8 * 1024
_READ_WAIT = 5.0
_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@runtime_checkable
class MetricsPage(Protocol):
    """Renders the metrics page (``PrometheusRouterMetrics``)."""

    async def exposition(self) -> tuple[bytes, str]:
        """The page and its content type."""
        ...


class Health(Protocol):
    """The router's answers to the probes: None when fine, else one line saying why not."""

    def liveness(self) -> str | None:
        """Why the router is not alive (its NATS connection is down), or None."""
        ...

    async def readiness(self) -> str | None:
        """Why the router is not ready to lead or take over, or None."""
        ...


class HttpEndpoint(AsyncService):
    """Serves the probes and the metrics on ``host:port`` (port 0: a free one).

    Args:
        host: the listening address.
        port: the listening port.
        health: answers the probes.
        metrics: renders ``/metrics`` (None: 404).
    """

    def __init__(self, host: str, port: int, health: Health, metrics: MetricsPage | None) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one chosen when 0 was asked)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen.

        Raises:
            OSError: the address cannot be bound (the port is taken).
        """
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=_MAX_HEAD
        )
        _log.info("serving /metrics, /healthz and /readyz on http://%s:%d", self._host, self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections. Idempotent."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                self._server.close_clients()
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b""
        try:
            async with asyncio.timeout(_READ_WAIT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, ctype, body = await self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, ctype, body = 400, _TEXT, b"bad request\n"
        except ConnectionError:
            writer.close()
            return
        except Exception:  # a probe must get an answer whatever failed
            _log.exception("answering an HTTP request failed")
            status, ctype, body = 500, _TEXT, b"internal error\n"
        header = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(ConnectionError):
            writer.write(header if head.startswith(b"HEAD ") else header + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request head."""
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3:
            return 400, _TEXT, b"bad request line\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, _TEXT, b"GET or HEAD only\n"
        if target == b"/metrics":
            if self._metrics is None:
                return 404, _TEXT, b"this router keeps no Prometheus metrics\n"
            body, ctype = await self._metrics.exposition()
            return 200, ctype, body
        if target == b"/healthz":
            return _probe(self._health.liveness())
        if target == b"/readyz":
            return _probe(self._health.liveness() or await self._health.readiness())
        return 404, _TEXT, b"not found: /metrics, /healthz, /readyz\n"


def _probe(problem: str | None) -> tuple[int, str, bytes]:
    if problem is None:
        return 200, _TEXT, b"ok\n"
    return 503, _TEXT, problem.encode() + b"\n"
