"""Opt-in Prometheus metrics of one client: ``IPCClient(..., metrics=True)``.

``prometheus-client`` is the optional extra ``ipc-client-sdk[metrics]``, imported only
when metrics are asked for; a client without them counts through ``NoClientMetrics``,
which does nothing.

Series (``PrometheusClientMetrics``):

- ``ipc_client_calls_total{service,method,path,outcome}``: calls made, ``path`` durable or
  direct (the path that answered), ``outcome`` ok or the error code in lower case;
- ``ipc_client_call_duration_seconds{service,method,path}``: seconds a call took;
- ``ipc_handler_duration_seconds{service,method}``: seconds the handlers of the services
  this client serves ran;
- ``ipc_events_published_total``, ``ipc_events_handled_total{outcome}`` (ok, error, or
  unfit: the event could not be read or did not fit the model), ``ipc_dead_letters_total``.

Label values stay bounded: at most ``max_label_sets`` (service, method) pairs each for
calls and handlers, later ones under ``_other``; no event topic is a label.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ipc_client_sdk._errors import InvalidArgumentError, IPCError
from ipc_client_sdk._tally import (
    DURATION_BUCKETS,
    OTHER,
    CallTally,
    LabelCap,
    Latencies,
    counter_family,
    histogram_family,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

__all__ = [
    "CLIENT_METRICS",
    "DURATION_BUCKETS",
    "OTHER",
    "NoClientMetrics",
    "PrometheusClientMetrics",
    "client_metrics",
    "outcome_of",
]

DEFAULT_MAX_LABEL_SETS = 256
"""Distinct (service, method) pairs labelled at most, for calls and for handlers."""

CLIENT_METRICS = (
    "ipc_client_calls_total",
    "ipc_client_call_duration_seconds",
    "ipc_handler_duration_seconds",
    "ipc_events_published_total",
    "ipc_events_handled_total",
    "ipc_dead_letters_total",
)
"""Every series name a client exposes."""


class NoClientMetrics:
    """Counts nothing: a client's metrics when they are off."""

    registry: CollectorRegistry | None = None
    counting = False
    """Whether anything is counted: when not, a caller skips timing its calls."""

    def call_done(
        self, service: str, method: str, direct: bool, outcome: str, seconds: float
    ) -> None:
        """Count nothing."""

    def handler_done(self, service: str, method: str, seconds: float) -> None:
        """Count nothing."""

    def event_published(self) -> None:
        """Count nothing."""

    def event_handled(self, outcome: str) -> None:
        """Count nothing."""

    def dead_lettered(self) -> None:
        """Count nothing."""


class PrometheusClientMetrics(NoClientMetrics):
    """A client's Prometheus series, in ``registry``.

    Each call and handler run updates plain counters (``_tally``: no lock, the client runs
    on one event loop); a collector registered in ``registry`` turns them into metric
    families when the registry is rendered.

    Args:
        registry: where the series are registered (one client per registry: the names
            would clash).
        max_label_sets: (service, method) pairs labelled; later ones count as ``_other``.
    """

    counting = True

    def __init__(
        self, registry: CollectorRegistry, *, max_label_sets: int = DEFAULT_MAX_LABEL_SETS
    ) -> None:
        self.registry = registry
        self._max = max_label_sets
        self._call_pairs = LabelCap(max_label_sets)
        self._calls: dict[tuple[str, str, bool], CallTally] = {}
        self._handlers: dict[tuple[str, str], Latencies] = {}
        self.published = 0
        self.handled: dict[str, int] = {}
        self.dead = 0
        registry.register(_ClientCollector(self))

    def call_done(
        self, service: str, method: str, direct: bool, outcome: str, seconds: float
    ) -> None:
        """Count one call."""
        tally = self._calls.get((service, method, direct))
        if tally is None:
            tally = self._call_tally(service, method, direct)
        tally.add(outcome, seconds)

    def _call_tally(self, service: str, method: str, direct: bool) -> CallTally:
        """The tally of a key not seen yet (over the cap: the ``_other`` one, cached under
        its own key only, so that forged names cannot grow the cache)."""
        if not self._call_pairs.admit((service, method)):
            service = method = OTHER
        return self._calls.setdefault((service, method, direct), CallTally())

    def handler_done(self, service: str, method: str, seconds: float) -> None:
        """Time one handler run (the service's own, declared methods)."""
        tally = self._handlers.get((service, method))
        if tally is None:
            if len(self._handlers) >= self._max:
                service = method = OTHER
            tally = self._handlers.setdefault((service, method), Latencies())
        tally.observe(seconds)

    def event_published(self) -> None:
        """Count one published event."""
        self.published += 1

    def event_handled(self, outcome: str) -> None:
        """Count one event handled (``ok``, ``error`` or ``unfit``)."""
        self.handled[outcome] = self.handled.get(outcome, 0) + 1

    def dead_lettered(self) -> None:
        """Count one dead letter stored."""
        self.dead += 1

    def families(self) -> list[Metric]:
        """The series as metric families, as counted now."""
        calls = sorted(self._calls.items())
        return [
            counter_family(
                "ipc_client_calls",
                "Calls this client made, by service, method, path (durable or direct) and outcome",
                ("service", "method", "path", "outcome"),
                (
                    ((service, method, _path(direct), outcome), count)
                    for (service, method, direct), tally in calls
                    for outcome, count in sorted(tally.outcomes.items())
                ),
            ),
            histogram_family(
                "ipc_client_call_duration_seconds",
                "Seconds a call took, as its caller saw it",
                ("service", "method", "path"),
                (((s, m, _path(direct)), tally) for (s, m, direct), tally in calls),
            ),
            histogram_family(
                "ipc_handler_duration_seconds",
                "Seconds the handlers this client serves ran",
                ("service", "method"),
                sorted(self._handlers.items()),
            ),
            counter_family(
                "ipc_events_published",
                "Events this client published (stored)",
                (),
                [((), self.published)],
            ),
            counter_family(
                "ipc_events_handled",
                "Events this client's subscribers handled, by outcome (ok, error, unfit)",
                ("outcome",),
                (((outcome,), count) for outcome, count in sorted(self.handled.items())),
            ),
            counter_family(
                "ipc_dead_letters",
                "Events this client's subscribers dead-lettered",
                (),
                [((), self.dead)],
            ),
        ]


def _path(direct: bool) -> str:
    return "direct" if direct else "durable"


class _ClientCollector:
    """Renders a client's counters when its registry is collected (a prometheus-client
    ``Collector``); ``describe`` gives the names, so that a second client registering in
    the same registry is refused as before."""

    def __init__(self, metrics: PrometheusClientMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return self._metrics.families()

    def collect(self) -> list[Metric]:
        return self._metrics.families()


def client_metrics(metrics: object) -> NoClientMetrics:
    """The metrics ``IPCClient(metrics=...)`` asks for: False/None none, True in a registry
    of the client's own, or a ``CollectorRegistry`` to register in.

    Raises:
        InvalidArgumentError: metrics asked for without ``prometheus-client`` installed, or
            something else than a bool or a registry.
    """
    if metrics is None or metrics is False:
        return NoClientMetrics()
    try:
        from prometheus_client import CollectorRegistry
    except ImportError as e:
        raise InvalidArgumentError(
            "metrics need prometheus-client: pip install 'ipc-client-sdk[metrics]'"
        ) from e
    if metrics is True:
        return PrometheusClientMetrics(CollectorRegistry(auto_describe=True))
    if isinstance(metrics, CollectorRegistry):
        return PrometheusClientMetrics(metrics)
    raise InvalidArgumentError(
        f"metrics must be True, False or a prometheus_client.CollectorRegistry, got {metrics!r}"
    )


def outcome_of(error: BaseException | None) -> str:
    """``ok``, the lower-case code of an ``IPCError``, ``cancelled``, or ``other``."""
    if error is None:
        return "ok"
    if isinstance(error, IPCError):
        return error.code.value.lower()
    return "cancelled" if isinstance(error, asyncio.CancelledError) else "other"
