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
from typing import TYPE_CHECKING, Any

from ipc_client_sdk._errors import InvalidArgumentError, IPCError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

OTHER = "_other"

DEFAULT_MAX_LABEL_SETS = 256
"""Distinct (service, method) pairs labelled at most, for calls and for handlers."""

DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

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

    Args:
        registry: where the series are registered (one client per registry: the names
            would clash).
        max_label_sets: (service, method) pairs labelled; later ones count as ``_other``.
    """

    def __init__(
        self, registry: CollectorRegistry, *, max_label_sets: int = DEFAULT_MAX_LABEL_SETS
    ) -> None:
        from prometheus_client import Counter, Histogram

        self.registry = registry
        self._max = max_label_sets
        self._calls = Counter(
            "ipc_client_calls",
            "Calls this client made, by service, method, path (durable or direct) and outcome",
            ["service", "method", "path", "outcome"],
            registry=registry,
        )
        self._call_seconds = Histogram(
            "ipc_client_call_duration_seconds",
            "Seconds a call took, as its caller saw it",
            ["service", "method", "path"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._handler_seconds = Histogram(
            "ipc_handler_duration_seconds",
            "Seconds the handlers this client serves ran",
            ["service", "method"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._published = Counter(
            "ipc_events_published", "Events this client published (stored)", registry=registry
        )
        self._handled = Counter(
            "ipc_events_handled",
            "Events this client's subscribers handled, by outcome (ok, error, unfit)",
            ["outcome"],
            registry=registry,
        )
        self._dead = Counter(
            "ipc_dead_letters", "Events this client's subscribers dead-lettered", registry=registry
        )
        self._call_children: dict[tuple[str, str, bool, str], tuple[Any, Any]] = {}
        self._call_pairs: set[tuple[str, str]] = set()
        self._handler_children: dict[tuple[str, str], Any] = {}
        self._handled_children: dict[str, Any] = {}

    def call_done(
        self, service: str, method: str, direct: bool, outcome: str, seconds: float
    ) -> None:
        """Count one call."""
        key = (service, method, direct, outcome)
        children = self._call_children.get(key)
        if children is None:
            if (service, method) not in self._call_pairs:
                if len(self._call_pairs) >= self._max:
                    service = method = OTHER
                else:
                    self._call_pairs.add((service, method))
            path = "direct" if direct else "durable"
            children = (
                self._calls.labels(service, method, path, outcome),
                self._call_seconds.labels(service, method, path),
            )
            if service != OTHER:
                self._call_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def handler_done(self, service: str, method: str, seconds: float) -> None:
        """Time one handler run (the service's own, declared methods)."""
        child = self._handler_children.get((service, method))
        if child is None:
            if len(self._handler_children) >= self._max:
                service = method = OTHER
            child = self._handler_seconds.labels(service, method)
            if service != OTHER:
                self._handler_children[(service, method)] = child
        child.observe(seconds)

    def event_published(self) -> None:
        """Count one published event."""
        self._published.inc()

    def event_handled(self, outcome: str) -> None:
        """Count one event handled (``ok``, ``error`` or ``unfit``)."""
        child = self._handled_children.get(outcome)
        if child is None:
            child = self._handled_children[outcome] = self._handled.labels(outcome)
        child.inc()

    def dead_lettered(self) -> None:
        """Count one dead letter stored."""
        self._dead.inc()


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
