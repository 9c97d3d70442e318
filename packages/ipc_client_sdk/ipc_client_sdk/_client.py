"""``IPCClient``: the one object a program holds to talk AegisIPC."""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from nats.aio.client import Client as NATS

from ipc_client_sdk._admin import AdminClient
from ipc_client_sdk._codec import DEFAULT_MAX_PAYLOAD, Codec
from ipc_client_sdk._errors import ClientStateError
from ipc_client_sdk._nats import DEFAULT_SERVERS, close_nats, open_nats, parse_servers
from ipc_client_sdk._subjects import DEFAULT_PREFIX, Subjects

_log = logging.getLogger("ipc_client_sdk")


class ClientState(enum.Enum):
    """Lifecycle of an ``IPCClient``: it opens once and closes once."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class IPCClient:
    """A connection to AegisIPC.

    Use it as an async context manager::

        async with IPCClient(servers="nats://127.0.0.1:4222", name="svc_a") as client:
            status = await client.admin.status()

    Args:
        servers: one NATS URL, a comma-separated list, or a sequence of URLs.
        name: the connection's name, shown in NATS monitoring and router logs.
        prefix: the subject prefix of the AegisIPC deployment (default ``ipc``).
        connect_timeout: seconds the first connect may take before it fails.
        request_timeout: default seconds to wait for an admin answer.
        max_payload: the largest payload this client encodes or accepts, in bytes.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = DEFAULT_SERVERS,
        name: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        connect_timeout: float = 2.0,
        request_timeout: float = 5.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if connect_timeout <= 0 or request_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.servers: list[str] = parse_servers(servers)
        self.name = name
        self.subjects = Subjects(prefix)
        self.codec = Codec(max_payload)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._state = ClientState.UNOPENED
        self._nc: NATS | None = None
        self._admin = AdminClient(self)

    @property
    def state(self) -> ClientState:
        """Where the client is in its lifecycle."""
        return self._state

    @property
    def admin(self) -> AdminClient:
        """Operator operations on the router (status, and more as the router grows)."""
        return self._admin

    @property
    def nats(self) -> NATS:
        """The underlying NATS connection (for the SDK's own modules).

        Raises:
            ClientStateError: the client is not open.
        """
        if self._state is not ClientState.OPEN or self._nc is None:
            raise ClientStateError(f"the client is {self._state.value}; use it while it is open")
        return self._nc

    async def connect(self) -> Self:
        """Connect to NATS.

        Raises:
            IPCConnectionError: NATS could not be reached within ``connect_timeout``.
            ClientStateError: the client was already opened (clients do not reopen).
        """
        if self._state is not ClientState.UNOPENED:
            raise ClientStateError(f"the client is {self._state.value}; create a new IPCClient")
        self._nc = await open_nats(
            self.servers, name=self.name, connect_timeout=self.connect_timeout, logger=_log
        )
        self._state = ClientState.OPEN
        return self

    async def close(self, *, timeout: float = 5.0) -> None:
        """Drain and close the connection. Safe to call more than once.

        Args:
            timeout: seconds the drain may take before the connection is simply closed.
        """
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.CLOSED
        if self._nc is not None:
            await close_nats(self._nc, timeout=timeout)

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
