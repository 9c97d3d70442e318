"""Ports: what the application layer needs from the outside world, as Protocols.

Adapters in ``infrastructure/`` satisfy them against JetStream and NATS; unit tests satisfy
them with ``InMemory*`` fakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ipc_router.domain import InstanceEvent, InstanceRecord, RoleEvent


class InstanceRepository(Protocol):
    """Where registered instances are kept (JetStream KV in production).

    A Protocol so that the status query and the registry can be tested without NATS.
    Every method raises ``StoreUnavailableError`` when the store does not answer in time.
    """

    async def list_instances(self) -> list[InstanceRecord]:
        """Every registered instance, in no particular order."""
        ...

    async def put(self, record: InstanceRecord) -> None:
        """Store (or replace) one instance's record."""
        ...

    async def delete(self, service: str, instance_id: str) -> None:
        """Forget one instance (no error when it is not there)."""
        ...


class ContractRepository(Protocol):
    """Where the method contracts each instance registered are kept (JetStream KV in
    production), apart from the records: they are large and rarely read.

    A contract is opaque here (its JSON Schemas, durability, summary), but for its
    ``version``. Every method raises ``StoreUnavailableError`` when the store does not
    answer in time.
    """

    async def save(
        self, service: str, instance_id: str, contracts: Mapping[str, Mapping[str, Any]] | None
    ) -> None:
        """Store one instance's contracts by method, or forget them (None)."""
        ...

    async def load(self) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """Every instance's contracts, by (service, instance_id)."""
        ...


@dataclass(frozen=True, slots=True)
class SavedRoutes:
    """The routing table's persistent part, as loaded at start."""

    claims: dict[tuple[str, str], list[str]]
    """(service, resource) -> claimants, owner first."""
    assignments: dict[tuple[str, str], str]
    """(service, resource) -> instance, for unclaimed resources."""


class RouteRepository(Protocol):
    """Where claims and sticky assignments are kept (JetStream KV in production).

    A Protocol so that the registry's rules can be tested without NATS. Every method raises
    ``StoreUnavailableError`` when the store does not answer in time.
    """

    async def load(self) -> SavedRoutes:
        """Everything saved."""
        ...

    async def save_claim(self, service: str, resource: str, claimants: list[str]) -> None:
        """Record a resource's claimants (an empty list removes the claim)."""
        ...

    async def save_assignment(self, service: str, resource: str, instance_id: str | None) -> None:
        """Record where an unclaimed resource is assigned (None removes the assignment)."""
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
    """Time, as a Protocol so tests can fix it: wall-clock Unix seconds for what is saved and
    shown, and a monotonic clock for every duration (heartbeat timeouts, grace periods), so
    that a step of the system clock cannot make live instances look dead."""

    def now(self) -> float:
        """The current Unix time."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps."""
        ...


class EventSink(Protocol):
    """Where the registry announces role, health and registry changes (never blocks)."""

    def emit(self, event: RoleEvent | InstanceEvent) -> None:
        """Queue one event for publication, and for a role change, the instance's notice."""
        ...


class InstanceNotifier(Protocol):
    """Pushes an instance its current state (roles, epoch, draining) at once, so that it
    need not wait for the answer to its next heartbeat: a handover tells an instance it is
    draining before it waits for its calls. A Protocol so handovers run without NATS."""

    async def tell(self, record: InstanceRecord, owned: tuple[str, ...] | None) -> None:
        """Send ``record``'s state and ``owned`` resources (None: not sent). Never raises;
        an instance that misses it is put right by its next heartbeat's answer."""
        ...


class Lease(Protocol):
    """The leadership lease: at most one router holds it at a time (JetStream KV in
    production). A Protocol so the leadership rules do not depend on the store.

    ``acquire`` and ``renew`` raise ``StoreUnavailableError`` when the store does not
    answer; ``release`` never raises.
    """

    @property
    def holder(self) -> str:
        """This router's id, as written into the lease."""
        ...

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it (or this process still does); whether it did."""
        ...

    async def renew(self, *, timeout: float | None = None) -> bool:
        """Extend the lease within ``timeout`` seconds; False when it was lost."""
        ...

    def forget(self) -> None:
        """Consider the lease lost without asking the store."""
        ...

    async def release(self) -> None:
        """Give the lease up so another router can take it at once."""
        ...


class Duties(Protocol):
    """What a router runs while it holds the lease (built by the composition root)."""

    async def start(self) -> None:
        """Begin; raises ``StoreUnavailableError`` when the saved state cannot be read."""
        ...

    async def stop(self, *, grace: float = 5.0) -> None:
        """End; calls in flight get ``grace`` seconds (0: a step-down, left to redelivery)."""
        ...


class DiscardEvents:
    """An ``EventSink`` that drops everything (unit tests of other behaviour)."""

    def emit(self, event: RoleEvent | InstanceEvent) -> None:
        """Drop ``event``."""


@dataclass(frozen=True, slots=True)
class CallsBacklog:
    """The calls stream's consumer, as JetStream counts it."""

    pending: int
    """Calls stored and not yet delivered to a router."""
    unacked: int
    """Calls delivered to a router and not yet answered (acked)."""


class RouterState(Protocol):
    """What a router is doing, read when its metrics are scraped (on the event loop)."""

    @property
    def leading(self) -> bool:
        """Whether this router leads now."""
        ...

    def instances(self) -> list[InstanceRecord]:
        """The leader's registered instances; empty on a router that does not lead."""
        ...

    def calls_in_flight(self) -> int:
        """Calls this router has taken and not yet answered."""
        ...

    def knows(self, service: str, method: str) -> bool:
        """Whether a registered instance serves ``service.method`` (the leader's table)."""
        ...

    async def calls_backlog(self) -> CallsBacklog | None:
        """The calls stream's backlog; None when JetStream does not say in time."""
        ...


@dataclass(frozen=True, slots=True)
class MethodCalls:
    """What a router counted for one (service, method) label pair since it started."""

    service: str
    method: str
    outcomes: Mapping[str, int]
    """Calls by outcome: ``ok`` or an error code in lower case."""
    bounds: tuple[float, ...]
    """The latency buckets' upper bounds, in seconds."""
    buckets: tuple[int, ...]
    """Calls by latency bucket, not cumulative; the last one counts those over every bound."""
    seconds: float
    """The calls' routed time, summed."""


ReportedCalls = tuple[dict[str, int], list[int], float]
"""One method's calls in a heartbeat: count per outcome, count per duration bucket, seconds
in all."""


class RouterMetrics(Protocol):
    """What the router counts as it works: plain in-memory counters on every router (the
    ``stats`` operation reads them), shown as Prometheus series with ``--metrics-port``.
    A Protocol so that the call path and the use cases import no metrics library.

    Every method is called on the call path or the control path: it returns at once,
    never raises and does no I/O. Names (service, method) are passed as received; bounding
    the label values is the implementation's job.
    """

    def call_answered(self, service: str, method: str, reply: bytes, seconds: float) -> None:
        """A call was answered with its instance's ``reply`` (an encoded ``CallReply``),
        ``seconds`` after the router took it."""
        ...

    def call_refused(self, service: str, method: str, code: str, seconds: float) -> None:
        """The router answered a call itself with the error ``code`` (an ``ErrorCode``)."""
        ...

    def calls_reported(self, service: str, calls: Mapping[str, ReportedCalls]) -> None:
        """An instance of ``service`` reported the calls it answered since its last
        heartbeat (``Heartbeat.calls``: method -> outcome counts, bucket counts, seconds)."""
        ...

    def call_redelivered(self) -> None:
        """JetStream delivered a call again (a router died or let it go while it held it)."""
        ...

    def call_forwarded(self) -> None:
        """This router forwarded a call to its instance."""
        ...

    def heartbeats_missed(self, count: int) -> None:
        """The health sweep found ``count`` instances silent past the heartbeat timeout."""
        ...

    def instance_event(self, event: RoleEvent | InstanceEvent) -> None:
        """A role, health or registry change the registry announced."""
        ...

    def observe(self, state: RouterState) -> None:
        """Read the router's gauges (leader, instances, calls in flight) from ``state``."""
        ...

    def call_counts(self) -> list[MethodCalls]:
        """The calls counted so far, by (service, method) label pair."""
        ...


class NoRouterMetrics:
    """A ``RouterMetrics`` that counts nothing (parts built outside ``bootstrap.py``, unit tests)."""

    def call_answered(self, service: str, method: str, reply: bytes, seconds: float) -> None:
        """Count nothing."""

    def call_refused(self, service: str, method: str, code: str, seconds: float) -> None:
        """Count nothing."""

    def calls_reported(self, service: str, calls: Mapping[str, ReportedCalls]) -> None:
        """Count nothing."""

    def call_redelivered(self) -> None:
        """Count nothing."""

    def call_forwarded(self) -> None:
        """Count nothing."""

    def heartbeats_missed(self, count: int) -> None:
        """Count nothing."""

    def instance_event(self, event: RoleEvent | InstanceEvent) -> None:
        """Count nothing."""

    def observe(self, state: RouterState) -> None:
        """Read nothing."""

    def call_counts(self) -> list[MethodCalls]:
        """None counted."""
        return []


class MeteredEvents:
    """An ``EventSink`` that shows each event to the metrics, then passes it on."""

    def __init__(self, sink: EventSink, metrics: RouterMetrics) -> None:
        self._sink = sink
        self._metrics = metrics

    def emit(self, event: RoleEvent | InstanceEvent) -> None:
        """Count ``event``, then queue it in the wrapped sink."""
        self._metrics.instance_event(event)
        self._sink.emit(event)
