"""Ports: what the application layer needs from the outside world, as Protocols.

Adapters in ``infrastructure/`` satisfy them against JetStream and NATS; unit tests satisfy
them with ``InMemory*`` fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ipc_router.domain import InstanceRecord


class InstanceRepository(Protocol):
    """Where registered instances are kept (JetStream KV in production).

    A Protocol so that the status query can be tested without a NATS server.
    """

    async def list_instances(self) -> list[InstanceRecord]:
        """Every registered instance, in no particular order.

        Raises:
            StoreUnavailableError: the store did not answer in time.
        """
        ...


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """What the router knows of the message broker it is connected to."""

    server_id: str | None
    server_name: str | None
    version: str | None
    cluster: str | None
    connected_url: str | None
    jetstream: bool
    embedded: bool


class BrokerInfoSource(Protocol):
    """Reads the connected broker's identity; a Protocol because it reads connection state."""

    def broker_info(self) -> BrokerInfo:
        """The broker as of the current connection."""
        ...


class Clock(Protocol):
    """Wall-clock time in Unix seconds; a Protocol so tests can fix time."""

    def now(self) -> float:
        """The current Unix time."""
        ...
