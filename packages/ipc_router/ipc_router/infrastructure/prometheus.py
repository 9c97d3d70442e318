"""``PrometheusRouterMetrics``: the router's counters (``RouterCounters``) shown as
Prometheus series, in a ``CollectorRegistry`` of its own (never the process-wide default
one: several routers may share a process, as they do in tests).

Nothing here runs on the call path: the counters are plain numbers updated there, and a
collector turns them into metric families when ``/metrics`` is read. The gauges (leader,
instances, calls in flight, the calls stream's backlog) are read from the router's state
at the same time, on the event loop. Label values are bounded as ``counters`` says;
``role`` and ``health`` are the domain's enums.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from ipc_client_sdk.protocol import OTHER, counter_family, histogram_family, reply_outcome
from ipc_router.application.ports import CallsBacklog
from ipc_router.domain import Health, Role
from ipc_router.infrastructure.counters import (
    DEFAULT_MAX_LABEL_SETS,
    FAILOVER_REASONS,
    RouterCounters,
)

__all__ = [
    "DEFAULT_MAX_LABEL_SETS",
    "FAILOVER_REASONS",
    "OTHER",
    "ROUTER_METRICS",
    "PrometheusRouterMetrics",
    "reply_outcome",
]

_BACKLOG_WAIT = 1.0
"""Seconds a scrape waits for JetStream's count of the calls stream's backlog."""

ROUTER_METRICS = (
    "ipc_router_calls_total",
    "ipc_router_call_duration_seconds",
    "ipc_router_calls_in_flight",
    "ipc_router_redeliveries_total",
    "ipc_router_calls_forwarded_total",
    "ipc_router_failovers_total",
    "ipc_router_instances",
    "ipc_router_leader",
    "ipc_router_heartbeats_missed_total",
    "ipc_router_calls_pending",
    "ipc_router_calls_unacked",
)
"""Every series name the router exposes (the dashboard's test reads this)."""


class PrometheusRouterMetrics(RouterCounters):
    """``RouterCounters`` that are also rendered as Prometheus series.

    Args:
        max_label_sets: distinct (service, method) pairs labelled; later ones count as
            ``_other``.

    Attributes:
        registry: the registry ``/metrics`` renders.
    """

    def __init__(self, *, max_label_sets: int = DEFAULT_MAX_LABEL_SETS) -> None:
        super().__init__(max_label_sets=max_label_sets)
        self.registry = CollectorRegistry(auto_describe=True)
        self._backlog: CallsBacklog | None = None
        self.registry.register(_CountersCollector(self))
        self.registry.register(_StateCollector(self))

    async def exposition(self) -> tuple[bytes, str]:
        """The text exposition format, after asking JetStream for the calls backlog."""
        if self.state is not None:
            try:
                self._backlog = await asyncio.wait_for(self.state.calls_backlog(), _BACKLOG_WAIT)
            except TimeoutError:
                self._backlog = None
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


class _CountersCollector(Collector):
    """The counters and the histogram, from the plain counters at each scrape."""

    def __init__(self, metrics: PrometheusRouterMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        calls = sorted(m.calls.items())
        yield counter_family(
            "ipc_router_calls",
            "Calls the router answered, by service, method and outcome (ok or error code)",
            ("service", "method", "outcome"),
            (
                ((service, method, outcome), count)
                for (service, method), tally in calls
                for outcome, count in sorted(tally.outcomes.items())
            ),
        )
        yield histogram_family(
            "ipc_router_call_duration_seconds",
            "Seconds from taking a call off the calls stream to publishing its answer",
            ("service", "method"),
            calls,
        )
        yield counter_family(
            "ipc_router_calls_forwarded",
            "Calls this router forwarded to their instances (its share of the routing)",
            (),
            [((), m.forwarded)],
        )
        yield counter_family(
            "ipc_router_redeliveries",
            "Calls JetStream delivered to a router again",
            (),
            [((), m.redeliveries)],
        )
        yield counter_family(
            "ipc_router_failovers",
            "Active roles (a service's or a claimed resource's) that moved to another instance",
            ("service", "reason"),
            sorted(m.failovers.items()),
        )
        yield counter_family(
            "ipc_router_heartbeats_missed",
            "Instances found silent past the heartbeat timeout (marked unhealthy)",
            (),
            [((), m.heartbeats_missed_total)],
        )


class _StateCollector(Collector):
    """The gauges, read from the router's state at each scrape."""

    def __init__(self, metrics: PrometheusRouterMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # read at each scrape: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        state = m.state
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
                service = record.service if m.pairs.admit((record.service, "")) else OTHER
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
