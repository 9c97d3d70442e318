"""``RouterCounters``: the router's ``RouterMetrics`` as plain in-memory counters.

Every router keeps them, whether or not it serves ``/metrics``: the ``stats`` operation
reads them, and ``PrometheusRouterMetrics`` (``--metrics-port``) renders the same counters
as Prometheus series at each scrape. They take no lock: the router updates them from its
event loop only. An answered call costs the outcome check (a byte search in the reply),
one dictionary lookup, a ``bisect`` into the latency buckets and three additions (about
half a microsecond; ``benchmarks/metrics_cost.py``).

Label values stay bounded:

- ``service`` and ``method`` only for names the registry knows (an instance answered the
  call, or a registered instance serves the method), and at most ``max_label_sets`` pairs;
  every other call counts under ``_other``;
- ``outcome`` is ``ok`` or an ``ErrorCode`` in lower case (``other`` for anything else);
- ``reason`` is one of the routing table's reasons for a role change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ipc_client_sdk.protocol import (
    DURATION_BUCKETS,
    OTHER,
    CallTally,
    ErrorCode,
    LabelCap,
    outcome_of_code,
    reply_outcome,
)
from ipc_router.application.ports import MethodCalls, ReportedCalls, RouterState
from ipc_router.domain import InstanceEvent, Role, RoleEvent

DEFAULT_MAX_LABEL_SETS = 256
"""Distinct (service, method) pairs labelled at most, per router."""

FAILOVER_REASONS = frozenset({"failover", "handover", "promote", "removed"})
"""Role-change reasons that move an active role from one instance to another."""

_LABELS = frozenset({"ok", "other"} | {code.value.lower() for code in ErrorCode})
"""The outcome label values: ``ok``, an ``ErrorCode`` in lower case, ``other``."""

_MAX_REPORTED = 1_000_000_000
"""A count in one heartbeat above this is not believed (the report is dropped)."""


_LONGEST_CALL = 3600.0
"""Seconds a reported call may have taken at most (the router's own bound on a call)."""


def _believable(counts: list[int], outcomes: dict[str, int], seconds: float) -> bool:
    """Whether one method's report is well formed: a count per bucket, none negative or
    absurd, as many calls in the buckets as in the outcomes, and a duration that is finite
    and at most an hour per call."""
    if len(counts) != len(DURATION_BUCKETS) + 1:
        return False
    values = [*counts, *outcomes.values()]
    if any(n < 0 or n > _MAX_REPORTED for n in values):
        return False
    calls = sum(counts)
    if calls != sum(outcomes.values()):
        return False
    return math.isfinite(seconds) and 0 <= seconds <= calls * _LONGEST_CALL


class RouterCounters:
    """A ``RouterMetrics`` that counts in memory.

    Args:
        max_label_sets: distinct (service, method) pairs counted apart; later ones count
            as ``_other``.

    Attributes:
        calls: (service, method) -> its calls (read when rendered).
        redeliveries: calls JetStream delivered again.
        forwarded: calls this router forwarded to their instances.
        heartbeats_missed_total: instances found silent.
        failovers: (service, reason) -> active roles moved.
        state: the router's state (None until ``observe``).
    """

    def __init__(self, *, max_label_sets: int = DEFAULT_MAX_LABEL_SETS) -> None:
        self.pairs = LabelCap(max_label_sets)
        self.calls: dict[tuple[str, str], CallTally] = {}
        self.redeliveries = 0
        self.forwarded = 0
        self.heartbeats_missed_total = 0
        self.failovers: dict[tuple[str, str], int] = {}
        self.state: RouterState | None = None

    # --- RouterMetrics ---------------------------------------------------------------------
    def call_answered(self, service: str, method: str, reply: bytes, seconds: float) -> None:
        """Count an answered call under its reply's outcome (the instance is registered)."""
        tally = self.calls.get((service, method))
        if tally is None:
            tally = self._tally(service, method, known=True)
        tally.add(reply_outcome(reply), seconds)

    def call_refused(self, service: str, method: str, code: str, seconds: float) -> None:
        """Count a call the router refused itself."""
        tally = self.calls.get((service, method))
        if tally is None:
            state = self.state
            known = state is not None and state.knows(service, method)
            tally = self._tally(service, method, known=known)
        tally.add(outcome_of_code(code), seconds)

    def calls_reported(self, service: str, calls: Mapping[str, ReportedCalls]) -> None:
        """Add an instance's report of the calls it answered; a method's report that is not
        well formed is dropped."""
        state = self.state
        for method, (outcomes, counts, seconds) in calls.items():
            if not _believable(counts, outcomes, seconds):
                continue
            tally = self.calls.get((service, method))
            if tally is None:
                known = state is not None and state.knows(service, method)
                tally = self._tally(service, method, known=known)
            for outcome, count in outcomes.items():
                label = outcome if outcome in _LABELS else "other"
                tally.outcomes[label] = tally.outcomes.get(label, 0) + count
            for bucket, count in enumerate(counts):
                tally.counts[bucket] += count
            tally.total += seconds

    def call_forwarded(self) -> None:
        """Count a forwarded call."""
        self.forwarded += 1

    def call_redelivered(self) -> None:
        """Count a redelivery."""
        self.redeliveries += 1

    def heartbeats_missed(self, count: int) -> None:
        """Count instances that went silent."""
        self.heartbeats_missed_total += count

    def instance_event(self, event: RoleEvent | InstanceEvent) -> None:
        """Count an active role moving to another instance."""
        if (
            isinstance(event, RoleEvent)
            and event.role is Role.ACTIVE
            and event.reason in FAILOVER_REASONS
        ):
            service = event.service if self.pairs.admit((event.service, "")) else OTHER
            key = (service, event.reason)
            self.failovers[key] = self.failovers.get(key, 0) + 1

    def observe(self, state: RouterState) -> None:
        """Read the gauges, and whether a name is known, from ``state`` from now on."""
        self.state = state

    def call_counts(self) -> list[MethodCalls]:
        """The calls counted so far, by (service, method) label pair."""
        return [
            MethodCalls(
                service=service,
                method=method,
                outcomes=dict(tally.outcomes),
                bounds=tally.bounds,
                buckets=tuple(tally.counts),
                seconds=tally.total,
            )
            for (service, method), tally in sorted(self.calls.items())
        ]

    # --- labels ------------------------------------------------------------------------------
    def _tally(self, service: str, method: str, *, known: bool) -> CallTally:
        """The tally of a pair seen for the first time (unknown or over the cap: the
        ``_other`` one, cached under its own key only, so forged names cannot grow the
        cache)."""
        if not (known and self.pairs.admit((service, method))):
            service = method = OTHER
        return self.calls.setdefault((service, method), CallTally())
