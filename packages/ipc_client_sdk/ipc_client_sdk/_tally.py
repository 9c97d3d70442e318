"""Plain in-memory counters for the metrics kept on the call path, turned into Prometheus
metric families only when a page is rendered.

prometheus-client's ``Counter`` and ``Histogram`` take a lock on every update (they may
be shared between threads); the router and a client update theirs from one event loop, so
an ``int`` in a slotted object does: a call costs a dictionary lookup, a ``bisect`` and
three additions. The families are built by a ``Collector`` at each scrape (``families``).

Nothing here imports prometheus-client at import time: it is imported by the functions
that build the families, which run only when metrics are rendered.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric

OTHER = "_other"
"""The label value for names beyond a cap or unknown to the counter's owner."""

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
"""Upper bounds, in seconds, of every duration histogram's buckets (router and SDK)."""


class Latencies:
    """One histogram series: a count per bucket (not cumulative: the last one counts what
    exceeds every bound) and the sum of what was observed.

    Args:
        bounds: the buckets' upper bounds, ascending.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration (a bucket holds the durations up to its bound, inclusive)."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


class CallTally(Latencies):
    """One (service, method[, path]) label set's calls: a count per outcome and their
    durations."""

    __slots__ = ("outcomes",)

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        super().__init__(bounds)
        self.outcomes: dict[str, int] = {}

    def add(self, outcome: str, seconds: float) -> None:
        """Count one call and its duration."""
        outcomes = self.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


class LabelCap:
    """Admits at most ``limit`` distinct label keys; the rest count under ``_other``.

    Args:
        limit: distinct keys admitted.
    """

    __slots__ = ("_admitted", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._admitted: set[Hashable] = set()

    def admit(self, key: Hashable) -> bool:
        """Whether ``key`` has (or may take) label values of its own."""
        if key in self._admitted:
            return True
        if len(self._admitted) >= self._limit:
            return False
        self._admitted.add(key)
        return True


def counter_family(
    name: str,
    documentation: str,
    labels: Sequence[str],
    values: Iterable[tuple[Sequence[str], float]],
) -> Metric:
    """A counter family (``name`` without ``_total``) with one sample per label values."""
    from prometheus_client.core import CounterMetricFamily

    if not labels:
        return CounterMetricFamily(name, documentation, value=sum(v for _, v in values))
    family = CounterMetricFamily(name, documentation, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


def histogram_family(
    name: str,
    documentation: str,
    labels: Sequence[str],
    series: Iterable[tuple[Sequence[str], Latencies]],
) -> Metric:
    """A histogram family with cumulative buckets, one series per label values."""
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    family = HistogramMetricFamily(name, documentation, labels=labels)
    for label_values, tally in series:
        bounds = [floatToGoString(b) for b in tally.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        cumulative, running = [], 0
        for bound, count in zip(bounds, tally.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        family.add_metric(label_values, cumulative, tally.total)
    return family
