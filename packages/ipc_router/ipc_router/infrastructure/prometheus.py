"""``PrometheusRouterMetrics``: the router's ``RouterMetrics`` in its own Prometheus
``CollectorRegistry`` (never the process-wide default one: several routers may share a
process, as they do in tests).

Counters and the histogram are updated on the call path: each (service, method, outcome)
gets its label children bound once and cached, so a call costs two dictionary lookups and
two updates. The gauges (leader, instances, calls in flight, the calls stream's backlog)
are read from the router's state when the page is rendered, on the event loop.

Label values stay bounded:

- ``service`` and ``method`` only for names the registry knows (an instance answered the
  call, or a registered instance serves the method), and at most ``max_label_sets`` pairs;
  every other call counts under ``_other``;
- ``outcome`` is ``ok`` or an ``ErrorCode`` in lower case (``other`` for anything else);
- ``reason`` is one of the routing table's reasons for a role change;
- ``role`` and ``health`` are the domain's enums.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgpack
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from ipc_client_sdk.protocol import DURATION_BUCKETS, ErrorCode
from ipc_router.application.ports import CallsBacklog, RouterState
from ipc_router.domain import Health, InstanceEvent, Role, RoleEvent

OTHER = "_other"
"""The label value for names beyond the cap or unknown to the registry."""

DEFAULT_MAX_LABEL_SETS = 256
"""Distinct (service, method) pairs labelled at most, per router."""

FAILOVER_REASONS = frozenset({"failover", "handover", "promote", "removed"})
"""Role-change reasons that move an active role from one instance to another."""

_OUTCOMES = {code.value: code.value.lower() for code in ErrorCode}

_BACKLOG_WAIT = 1.0
"""Seconds a scrape waits for JetStream's count of the calls stream's backlog."""

ROUTER_METRICS = (
    "ipc_router_calls_total",
    "ipc_router_call_duration_seconds",
    "ipc_router_calls_in_flight",
    "ipc_router_redeliveries_total",
    "ipc_router_failovers_total",
    "ipc_router_instances",
    "ipc_router_leader",
    "ipc_router_heartbeats_missed_total",
    "ipc_router_calls_pending",
    "ipc_router_calls_unacked",
)
"""Every series name the router exposes (the dashboard's test reads this)."""


def reply_outcome(reply: bytes) -> str:
    """``ok``, or the lower-case error code of an encoded ``CallReply``.

    Cheap for a success: only a reply that contains the bytes of the key ``error`` is
    decoded.
    """
    if b"error" not in reply:
        return "ok"
    try:
        envelope = msgpack.unpackb(reply)
    except Exception:  # the instance's bytes: anything may fail to unpack
        return "other"
    error = envelope.get("error") if isinstance(envelope, dict) else None
    if not error:
        return "ok"
    code = error.get("code") if isinstance(error, dict) else None
    return _OUTCOMES.get(code, "other") if isinstance(code, str) else "other"


class PrometheusRouterMetrics:
    """A ``RouterMetrics`` that keeps Prometheus series in a registry of its own.

    Args:
        max_label_sets: distinct (service, method) pairs labelled; later ones count as
            ``_other``.

    Attributes:
        registry: the registry ``/metrics`` renders.
    """

    def __init__(self, *, max_label_sets: int = DEFAULT_MAX_LABEL_SETS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._max = max_label_sets
        self._pairs: set[tuple[str, str]] = set()
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._state: RouterState | None = None
        self._backlog: CallsBacklog | None = None
        r = self.registry
        self._calls = Counter(
            "ipc_router_calls",
            "Calls the router answered, by service, method and outcome (ok or error code)",
            ["service", "method", "outcome"],
            registry=r,
        )
        self._duration = Histogram(
            "ipc_router_call_duration_seconds",
            "Seconds from taking a call off the calls stream to publishing its answer",
            ["service", "method"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._redeliveries = Counter(
            "ipc_router_redeliveries", "Calls JetStream delivered to a router again", registry=r
        )
        self._failovers = Counter(
            "ipc_router_failovers",
            "Active roles (a service's or a claimed resource's) that moved to another instance",
            ["service", "reason"],
            registry=r,
        )
        self._missed = Counter(
            "ipc_router_heartbeats_missed",
            "Instances found silent past the heartbeat timeout (marked unhealthy)",
            registry=r,
        )
        r.register(_StateCollector(self))

    # --- RouterMetrics ---------------------------------------------------------------------
    def call_answered(self, service: str, method: str, reply: bytes, seconds: float) -> None:
        """Count an answered call under its reply's outcome (the instance is registered)."""
        outcome = reply_outcome(reply)
        children = self._children.get((service, method, outcome))
        if children is None:
            children = self._bind(service, method, outcome, known=True)
        children[0].inc()
        children[1].observe(seconds)

    def call_refused(self, service: str, method: str, code: str, seconds: float) -> None:
        """Count a call the router refused itself."""
        outcome = _OUTCOMES.get(code, "other")
        children = self._children.get((service, method, outcome))
        if children is None:
            state = self._state
            known = state is not None and state.knows(service, method)
            children = self._bind(service, method, outcome, known=known)
        children[0].inc()
        children[1].observe(seconds)

    def call_redelivered(self) -> None:
        """Count a redelivery."""
        self._redeliveries.inc()

    def heartbeats_missed(self, count: int) -> None:
        """Count instances that went silent."""
        if count:
            self._missed.inc(count)

    def instance_event(self, event: RoleEvent | InstanceEvent) -> None:
        """Count an active role moving to another instance."""
        if (
            isinstance(event, RoleEvent)
            and event.role is Role.ACTIVE
            and event.reason in FAILOVER_REASONS
        ):
            service = event.service if self._admit(event.service, "") else OTHER
            self._failovers.labels(service, event.reason).inc()

    def observe(self, state: RouterState) -> None:
        """Read the gauges from ``state`` from now on."""
        self._state = state

    # --- the page ----------------------------------------------------------------------------
    async def exposition(self) -> tuple[bytes, str]:
        """The text exposition format, after asking JetStream for the calls backlog."""
        if self._state is not None:
            try:
                self._backlog = await asyncio.wait_for(self._state.calls_backlog(), _BACKLOG_WAIT)
            except TimeoutError:
                self._backlog = None
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    # --- labels ------------------------------------------------------------------------------
    def _bind(self, service: str, method: str, outcome: str, *, known: bool) -> tuple[Any, Any]:
        """The children for a key seen for the first time (unknown or over the cap: the
        ``_other`` children, cached under their own key only)."""
        if not (known and self._admit(service, method)):
            service = method = OTHER
            cached = self._children.get((OTHER, OTHER, outcome))
            if cached is not None:
                return cached
        children = (
            self._calls.labels(service, method, outcome),
            self._duration.labels(service, method),
        )
        self._children[(service, method, outcome)] = children
        return children

    def _admit(self, service: str, method: str) -> bool:
        """Whether the pair has (or may take) label values of its own."""
        pair = (service, method)
        if pair in self._pairs:
            return True
        if len(self._pairs) >= self._max:
            return False
        self._pairs.add(pair)
        return True


class _StateCollector(Collector):
    """The gauges, read from the router's state at each scrape."""

    def __init__(self, metrics: PrometheusRouterMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # read at each scrape: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        state = m._state
        leading = state is not None and state.leading
        yield GaugeMetricFamily(
            "ipc_router_leader", "1 on the router that leads, 0 on a standby router", leading
        )
        yield GaugeMetricFamily(
            "ipc_router_calls_in_flight",
            "Calls this router has taken and not yet answered",
            state.calls_in_flight() if state is not None else 0,
        )
        instances = GaugeMetricFamily(
            "ipc_router_instances",
            "Registered instances by service, role and health (reported by the leader only)",
            labels=["service", "role", "health"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        if state is not None and leading:
            for record in state.instances():
                # Instances are registered through the leader: a service beyond the cap is
                # still counted, under _other.
                service = record.service if m._admit(record.service, "") else OTHER
                key = (service, record.role.value, record.health.value)
                counts[key] = counts.get(key, 0) + 1
            for service in {key[0] for key in counts}:
                for role in Role:
                    for health in Health:
                        counts.setdefault((service, role.value, health.value), 0)
        for key, count in sorted(counts.items()):
            instances.add_metric(list(key), count)
        yield instances
        backlog = m._backlog
        if backlog is not None:
            yield GaugeMetricFamily(
                "ipc_router_calls_pending",
                "Calls in the calls stream not yet delivered to a router",
                backlog.pending,
            )
            yield GaugeMetricFamily(
                "ipc_router_calls_unacked",
                "Calls delivered to a router and not yet answered",
                backlog.unacked,
            )
