"""``Link``: the part of a client that the SDK's helper modules share.

``IPCClient`` builds one ``Link`` and hands it to each helper (admin, calls, serving,
publish/subscribe, router events). The helpers depend on this narrow object rather than on
``IPCClient``, so that no module imports the client back and the client's public surface
stays its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from ipc_client_sdk._codec import Codec
from ipc_client_sdk._errors import ClientStateError
from ipc_client_sdk._metrics import NoClientMetrics
from ipc_client_sdk._permissions import Permissions
from ipc_client_sdk._replies import ReplyInbox
from ipc_client_sdk._subjects import Subjects


class ClientState(enum.Enum):
    """Lifecycle of an ``IPCClient``: it opens once and closes once."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False, slots=True)
class Link:
    """One client's connection, reply inbox, subject map, codec and defaults.

    Attributes:
        servers: the NATS URLs, for error messages.
        name: the client's name (a publisher's name, a subscriber's default name).
        subjects: the deployment's subject map.
        codec: the client's codec (its payload limit).
        request_timeout: default seconds to wait for an answer.
        permissions: the operations in flight that NATS may refuse (the connection's error
            callback fails them with ``PermissionDeniedError``).
        metrics: what the client counts (nothing unless ``IPCClient(metrics=...)``).
    """

    servers: list[str]
    name: str | None
    subjects: Subjects
    codec: Codec
    request_timeout: float
    permissions: Permissions = field(default_factory=Permissions)
    metrics: NoClientMetrics = field(default_factory=NoClientMetrics)
    _state: ClientState = field(default=ClientState.UNOPENED, init=False)
    _nc: NATS | None = field(default=None, init=False)
    _replies: ReplyInbox | None = field(default=None, init=False)

    @property
    def state(self) -> ClientState:
        """Where the client is in its lifecycle."""
        return self._state

    @property
    def closing(self) -> bool:
        """True once the client has begun to close."""
        return self._state is ClientState.CLOSED

    @property
    def nats(self) -> NATS:
        """The NATS connection.

        Raises:
            ClientStateError: the client is not open.
        """
        if self._state is not ClientState.OPEN or self._nc is None:
            raise ClientStateError(f"the client is {self._state.value}; use it while it is open")
        return self._nc

    @property
    def replies(self) -> ReplyInbox:
        """The client's reply inbox: one subscription for every reply it awaits.

        Raises:
            ClientStateError: the client is not open.
        """
        if self._replies is None:
            self._replies = ReplyInbox(self.nats, self.permissions)
        return self._replies

    def opened(self, nc: NATS) -> None:
        """Record the connection ``connect`` opened."""
        self._nc = nc
        self._state = ClientState.OPEN

    def closed(self) -> NATS | None:
        """Mark the client closed, fail the replies still awaited, and return the
        connection for the caller to close (None if it never opened)."""
        self._state = ClientState.CLOSED
        if self._replies is not None:
            self._replies.fail_all(ClientStateError("the client closed during the call"))
        return self._nc
