"""The composition root: the one place where the router's objects are built and wired.

Everything the router is made of is constructed here, for both of its states:

- every router (``build_router``): the admin endpoint with the status query, and the
  ``Leadership`` that holds (or waits for) the lease;
- the leading router (``LeaderDuties``, started when the lease is taken): the routing
  table, the JetStream repositories, ``InstanceRegistry``, the event publisher, the
  use cases (``Membership``, ``Handovers``, ``RegistryUpkeep``), the control endpoint and
  the call path.

What can vary is in ``RouterDependencies``: how the connection is opened (credentials go
there), how the leader's call path is built (a different data path goes there), the clock
and the codec. A new dependency, such as a metrics sink, becomes a field of it and is
passed from here to the objects that use it; nothing else constructs an adapter.
``api/app.py`` (``Router``) runs the process around this: the embedded server, the
connection's lifetime, provisioning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from nats.aio.client import Client as NATS

from ipc_client_sdk.protocol import LEASE_FRACTION, AuthDir, Codec, Subjects, open_nats
from ipc_router import __version__
from ipc_router.api.admin import OpsEndpoint, admin_endpoint
from ipc_router.api.calls import CallConsumer
from ipc_router.api.config import RouterConfig
from ipc_router.api.control import ControlAPI
from ipc_router.api.forwarded import ForwardedCalls
from ipc_router.application.contracts import DescribeContracts
from ipc_router.application.handover import Handovers
from ipc_router.application.inflight import InflightTracker
from ipc_router.application.leadership import Leadership
from ipc_router.application.membership import HeartbeatReports, Membership
from ipc_router.application.ports import (
    CallsBacklog,
    Clock,
    MeteredEvents,
    RouterMetrics,
)
from ipc_router.application.registry import InstanceRegistry
from ipc_router.application.stats import CallStatistics
from ipc_router.application.status import GetRouterStatus, RouterIdentity
from ipc_router.application.upkeep import RegistryUpkeep
from ipc_router.domain import Health, InstanceRecord, RoutingTable
from ipc_router.infrastructure.broker_info import NatsBrokerInfo
from ipc_router.infrastructure.caller_inboxes import CallerInboxes
from ipc_router.infrastructure.clock import SystemClock
from ipc_router.infrastructure.counters import RouterCounters
from ipc_router.infrastructure.jetstream_probe import JetStreamProbe
from ipc_router.infrastructure.jetstream_setup import RouterStores, StorageSettings
from ipc_router.infrastructure.kv_claims import ResultClaims
from ipc_router.infrastructure.kv_follow import FollowedTable
from ipc_router.infrastructure.kv_lease import JetStreamLease
from ipc_router.infrastructure.kv_registry import (
    JetStreamContractRepository,
    JetStreamInstanceRepository,
)
from ipc_router.infrastructure.kv_routes import JetStreamRouteRepository
from ipc_router.infrastructure.nats_events import EventPublisher, NatsInstanceNotifier
from ipc_router.infrastructure.nats_server import (
    NatsServerConfig,
    NatsServerError,
    NatsServerProcess,
)
from ipc_router.infrastructure.prometheus import PrometheusRouterMetrics

_log = logging.getLogger("ipc_router")
_leader_log = logging.getLogger("ipc_router.leadership")


class CallPath(Protocol):
    """The leader's data path: takes accepted calls and relays them to their instances."""

    async def start(self) -> None:
        """Start taking calls."""
        ...

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop taking calls; those in hand get ``grace`` seconds."""
        ...

    @property
    def inflight(self) -> int:
        """Calls taken and not yet answered."""
        ...


Connect = Callable[[RouterConfig, str, Callable[[], Awaitable[None]]], Awaitable[NATS]]
"""Opens the router's connection: (config, server URLs, called once it closed for good)."""


@dataclass(frozen=True, slots=True)
class LeaderParts:
    """What a leader's call path is built from."""

    wiring: Wiring
    registry: InstanceRegistry
    tracker: InflightTracker
    in_term: Callable[[], bool]
    """Whether this router's leadership term still runs: ask before each routing action."""
    forwarded: ForwardedCalls
    """The calls this router forwarded, acked when their instances report."""


CallPathFactory = Callable[[LeaderParts], CallPath]
"""Builds the leader's call path each time this router starts to lead."""


async def connect_nats(
    config: RouterConfig, url: str, on_closed: Callable[[], Awaitable[None]]
) -> NATS:
    """The default ``Connect``: a bounded connect to ``url`` under the router's name, with
    the configured credentials.

    Raises:
        AuthenticationError: NATS refused the credentials, or a file cannot be used.
        IPCConnectionError: NATS could not be reached.
    """
    return await open_nats(
        url,
        name=f"ipc-router {config.router_id}",
        credentials=config.credentials,
        connect_timeout=config.connect_timeout,
        logger=_log,
        on_closed=on_closed,
    )


def durable_call_path(parts: LeaderParts) -> CallPath:
    """The default ``CallPathFactory``: the consumer of the durable calls stream."""
    w = parts.wiring
    return CallConsumer(
        w.nc,
        w.nc.jetstream(),
        w.subjects,
        w.codec,
        parts.registry,
        ResultClaims(w.stores.results).read,
        parts.forwarded,
        ack_wait=w.config.call_ack_wait,
        owns=w.caller_inboxes(),
        router_id=w.config.router_id,
        in_term=parts.in_term,
        metrics=w.deps.metrics,
    )


@dataclass(frozen=True, slots=True)
class RouterDependencies:
    """What the router is built with beyond its configuration; each field has a default.

    The one place where a dependency is plugged in: a field here, read by the builders in
    this module (and by ``Router`` for ``connect``).
    """

    connect: Connect = connect_nats
    """Opens the connection (where credentials are applied)."""
    call_path: CallPathFactory = durable_call_path
    """Builds the leader's call path (where another data path plugs in)."""
    clock: Clock = field(default_factory=SystemClock)
    codec: Codec = field(default_factory=Codec)
    metrics: RouterMetrics = field(default_factory=RouterCounters)
    """What the router counts: in-memory counters, read by the ``stats`` operation
    (``with_metrics`` shows them as Prometheus series for --metrics-port)."""


def with_metrics(config: RouterConfig, deps: RouterDependencies) -> RouterDependencies:
    """``deps`` with the counters also shown as Prometheus series, in a registry of this
    router's own, when ``--metrics-port`` is set and no other metrics were given."""
    if config.metrics_port is None or type(deps.metrics) is not RouterCounters:
        return deps
    return replace(deps, metrics=PrometheusRouterMetrics())


@dataclass(frozen=True, slots=True)
class Wiring:
    """One router's connection, stores and settings: what every builder here reads."""

    nc: NATS
    stores: RouterStores
    config: RouterConfig
    subjects: Subjects
    storage: StorageSettings
    deps: RouterDependencies

    @property
    def codec(self) -> Codec:
        """The envelope codec."""
        return self.deps.codec

    @property
    def instance_lease(self) -> float:
        """The lease, in seconds, granted to an instance with each answer and notice."""
        return self.config.heartbeat_timeout * LEASE_FRACTION

    def instance_repository(self) -> JetStreamInstanceRepository:
        """The registered instances in their KV bucket (forgetting one forgets its
        contracts too)."""
        return JetStreamInstanceRepository(
            self.stores.registry,
            self.subjects.registry_bucket,
            self.codec,
            contracts=self.contract_repository(),
        )

    def caller_inboxes(self) -> Callable[[str, str], bool] | None:
        """Whether a reply address lies in its caller's own inbox, with ``--auth-dir``
        (the directory names every identity's key); None without one."""
        if self.config.auth_dir is None:
            return None
        return CallerInboxes(AuthDir(self.config.auth_dir)).owns

    def contract_repository(self) -> JetStreamContractRepository:
        """The instances' method contracts in their KV bucket."""
        return JetStreamContractRepository(
            self.stores.contracts, self.subjects.contracts_bucket, self.codec
        )


def storage_settings(config: RouterConfig) -> StorageSettings:
    """What the router keeps in JetStream, and its caps, from the router's configuration."""
    return StorageSettings(
        replicas=config.replicas, lease_ttl_s=config.lease_ttl, limits=config.limits
    )


def embedded_server(config: RouterConfig, store: Path) -> NatsServerProcess:
    """The bundled nats-server a router runs when no NATS URL is configured.

    Its ``max_file_store`` is what the router's caps reserve plus a quarter for the KV
    buckets' bookkeeping, not nats-server's default of 75 % of the free disk: the router's
    caps, not the disk it happens to start on, decide whether it starts.

    With an auth directory, the server admits its identities only, with their permissions
    (its ``authorization.conf``); without, anybody who reaches the address.

    Raises:
        NatsServerError: the auth directory's authorization file cannot be read.
    """
    reserved = config.limits.reserved
    authorization = ""
    if config.auth_dir is not None:
        path = AuthDir(config.auth_dir).authorization_file
        try:
            authorization = path.read_text()
        except OSError as e:
            raise NatsServerError(f"cannot read {path}: {e.strerror}") from e
    return NatsServerProcess(
        NatsServerConfig(
            store_dir=store,
            host=config.embedded_host,
            port=config.embedded_port,
            server_name=f"ipc-embedded-{config.router_id}",
            max_file_store=reserved + reserved // 4,
            extra=authorization,
        )
    )


class StandbyRouting:
    """A standby router's share of the call path: it pulls calls from the same consumer as
    the leader and forwards what its copy of the routing table (``FollowedTable``, fed by
    the KV buckets the leader writes) can route at once; the rest it naks, and JetStream
    delivers it again to whichever router pulls next. Runs while the router does not lead
    (``LeaderDuties`` stops it before taking over, and starts it again after).

    Args:
        w: the connection and settings.
        forwarded: the calls this router forwarded (acked when their instances report).
    """

    def __init__(self, w: Wiring, forwarded: ForwardedCalls) -> None:
        self._w = w
        self._forwarded = forwarded
        self._table: FollowedTable | None = None
        self._calls: CallConsumer | None = None
        self._lock = asyncio.Lock()  # leading and stepping down start and stop it
        self._closed = False

    @property
    def inflight(self) -> int:
        """Calls taken and not yet forwarded or left."""
        return self._calls.inflight if self._calls is not None else 0

    async def start(self) -> None:
        """Follow the routing table and start taking calls (idempotent; never after
        ``close``)."""
        async with self._lock:
            if self._calls is None and not self._closed:
                await self._start()

    async def _start(self) -> None:
        w = self._w
        self._table = FollowedTable(
            w.stores.registry, w.stores.routes, w.codec, w.config.heartbeat_timeout
        )
        self._table.start()
        self._forwarded.alive = self._table.alive  # keeps forwarded calls alive meanwhile
        self._calls = CallConsumer(
            w.nc,
            w.nc.jetstream(),
            w.subjects,
            w.codec,
            None,
            ResultClaims(w.stores.results).read,
            self._forwarded,
            ack_wait=w.config.call_ack_wait,
            owns=w.caller_inboxes(),
            router_id=w.config.router_id,
            route_now=self._table.route,
            configure=False,
            metrics=w.deps.metrics,
        )
        await self._calls.start()

    async def stop(self) -> None:
        """Stop taking calls (those taken are forwarded or left for redelivery)."""
        async with self._lock:
            if self._calls is not None:
                await self._calls.stop(grace=1.0)
                self._calls = None
            if self._table is not None:
                self._forwarded.alive = None
                await self._table.stop()
                self._table = None

    async def close(self) -> None:
        """Stop for good: the router is stopping."""
        self._closed = True
        await self.stop()


class RouterServices:
    """What every router serves on its connection: the admin endpoint, and the
    leadership that runs the leader's duties while it holds the lease."""

    def __init__(
        self,
        admin: OpsEndpoint,
        leadership: Leadership,
        duties: LeaderDuties,
        probe: JetStreamProbe,
        forwarded: ForwardedCalls,
        standby: StandbyRouting | None = None,
    ) -> None:
        self._forwarded = forwarded
        self._standby = standby
        self._admin = admin
        self._leadership = leadership
        self._duties = duties
        self.probe = probe
        """Asks JetStream about the router's assets (for ``/readyz``)."""

    @property
    def leading(self) -> bool:
        """Whether this router leads now."""
        return self._leadership.leading

    @property
    def lease_reachable(self) -> bool:
        """Whether the last try for (or renewal of) the lease reached the store."""
        return self._leadership.lease_reachable

    # --- RouterState (read by the metrics) ---------------------------------------------------
    def instances(self) -> list[InstanceRecord]:
        """The leader's registered instances (none while not leading)."""
        table = self._duties.table
        return table.instances() if table is not None and self.leading else []

    def calls_in_flight(self) -> int:
        """Calls this router has taken and not yet answered."""
        return self._duties.calls_in_flight

    def knows(self, service: str, method: str) -> bool:
        """Whether a registered instance serves ``service.method``."""
        table = self._duties.table
        return table is not None and table.knows(service, method)

    async def calls_backlog(self) -> CallsBacklog | None:
        """The calls stream's backlog."""
        return await self.probe.calls_backlog()

    async def start(self) -> None:
        """Answer the admin subjects, then try for the lease."""
        await self._admin.start()
        await self._forwarded.start()  # before any call is forwarded
        await self._leadership.start()
        if self._standby is not None and not self._leadership.leading:
            await self._standby.start()

    async def stop(self) -> None:
        """Stop leading (releasing the lease) and routing; the admin endpoint ends with the
        connection."""
        if self._standby is not None:
            await self._standby.close()
        await self._leadership.stop()
        await self._forwarded.stop()


def build_router(w: Wiring, *, embedded: bool, started_at: float) -> RouterServices:
    """Wire what every router serves, leading or not.

    Args:
        w: the connection and settings.
        embedded: whether the router runs its own nats-server (shown by ``status``).
        started_at: when the process started (Unix time).
    """
    identity = RouterIdentity(
        router_id=w.config.router_id,
        version=__version__,
        subject_prefix=w.subjects.prefix,
        started_at=started_at,
    )
    lease = JetStreamLease(w.stores.leases, w.subjects.leases_bucket, w.config.router_id)
    stats = CallStatistics(w.deps.metrics, w.deps.clock, w.config.router_id)
    forwarded = ForwardedCalls(w.nc, w.subjects, ack_wait=w.config.call_ack_wait)
    standby = StandbyRouting(w, forwarded) if w.config.standby_routing else None
    duties = LeaderDuties(w, lambda: leadership.in_term(), stats, forwarded, standby)
    leadership = Leadership(lease, duties, w.storage.lease_ttl_s)
    get_status = GetRouterStatus(
        identity,
        w.instance_repository(),
        NatsBrokerInfo(w.nc, embedded=embedded),
        w.deps.clock,
        leading=lambda: leadership.leading,
    )
    describe = DescribeContracts(w.instance_repository(), w.contract_repository())
    admin = admin_endpoint(w.nc, w.subjects, w.codec, get_status, describe)
    services = RouterServices(
        admin,
        leadership,
        duties,
        JetStreamProbe(w.nc.jetstream(), w.subjects),
        forwarded,
        standby,
    )
    w.deps.metrics.observe(services)
    return services


class LeaderDuties:
    """The leading router's duties (a ``Duties``), built anew each time it starts to lead:
    registration, heartbeats, handovers, the health sweep, and the call path.

    Args:
        w: the connection and settings.
        in_term: whether the leadership term still runs (the duties act only then).
        stats: the figures of the ``stats`` operation (the router's, across its terms).
        forwarded: the calls this router forwarded (acked when their instances report).
        standby: the router's standby routing, stopped while it leads.
    """

    def __init__(
        self,
        w: Wiring,
        in_term: Callable[[], bool],
        stats: CallStatistics,
        forwarded: ForwardedCalls,
        standby: StandbyRouting | None = None,
    ) -> None:
        self._w = w
        self._forwarded = forwarded
        self._standby = standby
        self._in_term = in_term
        self._stats = stats
        self._events: EventPublisher | None = None
        self._registry: InstanceRegistry | None = None
        self._handovers: Handovers | None = None
        self._upkeep: RegistryUpkeep | None = None
        self._control: ControlAPI | None = None
        self._calls: CallPath | None = None

    @property
    def table(self) -> RoutingTable | None:
        """The routing table while leading."""
        return self._registry.table if self._registry is not None else None

    @property
    def calls_in_flight(self) -> int:
        """Calls the call path has taken and not yet answered."""
        return self._calls.inflight if self._calls is not None else 0

    async def start(self) -> None:
        """Load the saved routing state, then open registration and the call path.

        Raises:
            StoreUnavailableError: the saved state could not be read.
        """
        w = self._w
        if self._standby is not None:
            await self._standby.stop()  # the leader routes by its own table from now on
        table = RoutingTable(w.config.heartbeat_timeout)

        def state_of(
            service: str, instance_id: str
        ) -> tuple[InstanceRecord, tuple[str, ...]] | None:
            record = table.get(service, instance_id)
            return None if record is None else (record, table.owned(service, instance_id))

        notifier = NatsInstanceNotifier(w.nc, w.subjects, w.codec, w.instance_lease)
        self._events = EventPublisher(w.nc, w.subjects, w.codec, state_of, notifier)
        self._events.start()
        registry = InstanceRegistry(
            table,
            w.instance_repository(),
            JetStreamRouteRepository(w.stores.routes, w.subjects.routes_bucket, w.codec),
            w.deps.clock,
            MeteredEvents(self._events, w.deps.metrics),
        )
        restored = await registry.restore()
        if restored:
            _leader_log.info(
                "restored %d instances with their roles; none counts as dead for %.1fs",
                restored,
                2 * w.config.heartbeat_timeout,
            )
        self._registry = registry

        def alive(service: str, instance_id: str, session: str) -> bool:
            record = table.get(service, instance_id)
            return (
                record is not None and record.session == session and record.health is Health.HEALTHY
            )

        self._forwarded.alive = alive  # keeps the calls it forwards alive while they live
        tracker, reports = self._forwarded.tracker, HeartbeatReports()
        self._handovers = Handovers(registry, tracker, reports, notifier)
        self._control = ControlAPI(
            w.nc,
            w.subjects,
            w.codec,
            registry,
            Membership(registry, reports, w.contract_repository()),
            self._handovers,
            tracker,
            w.instance_lease,
            in_term=self._in_term,
            stats=self._stats,
            metrics=w.deps.metrics,
        )
        self._upkeep = RegistryUpkeep(
            registry, lambda: w.nc.is_connected, self._in_term, metrics=w.deps.metrics
        )
        await self._control.start()
        self._upkeep.start()
        self._stats.start()
        self._calls = w.deps.call_path(
            LeaderParts(w, registry, tracker, self._in_term, self._forwarded)
        )
        await self._calls.start()

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop the sweep, handovers, registration and heartbeats, then the call path; calls
        in flight get ``grace`` seconds (calls abandoned after that are redelivered, and the
        results bucket answers any that already ran)."""
        await self._stats.stop()
        if self._upkeep is not None:
            await self._upkeep.stop()
            self._upkeep = None
        if self._handovers is not None:
            await self._handovers.close()
            self._handovers = None
        if self._control is not None:
            await self._control.stop()
            self._control = None
        if self._calls is not None:
            await self._calls.stop(grace=grace)
            self._calls = None
        if self._registry is not None and grace > 0:
            # A planned stop: save what is pending, so the next leader starts from it.
            await self._registry.flush()
            self._registry = None
        if self._events is not None:
            await self._events.stop()
            self._events = None
        self._forwarded.alive = None
        if self._standby is not None:
            await self._standby.start()
