"""The ``stats`` operation: per-method call rates, error rates and latency percentiles from
the leading router's counters (the numbers ``/metrics`` shows).

Two views of each (service, method) pair:

- **total**: everything counted since the router started, the rate taken over the seconds
  it has led (calls are counted only while it leads, so this is the average rate while it
  did);
- **window**: the last full window (``window`` seconds, 10 by default) between two
  snapshots of the counters taken while leading: the rate now, give or take a window.
  None until the router has led for one window.

Percentiles are estimated from the latency buckets as Prometheus' ``histogram_quantile``
does: linear interpolation inside the bucket that holds the rank, the highest bound when
the rank falls past it. The error rate is the fraction of calls whose outcome is not ok.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from ipc_router.application.ports import Clock, MethodCalls, RouterMetrics

DEFAULT_WINDOW = 10.0
"""Seconds between two snapshots of the counters."""

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class CallFigures:
    """One pair's calls over some seconds."""

    calls: int
    errors: int
    """Calls whose outcome was not ``ok``."""
    rate: float
    """Calls per second."""
    error_rate: float | None
    """``errors / calls``; None without calls."""
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    outcomes: dict[str, int]


@dataclass(frozen=True, slots=True)
class MethodFigures:
    """One (service, method) pair's figures."""

    service: str
    method: str
    total: CallFigures
    window: CallFigures | None


@dataclass(frozen=True, slots=True)
class StatsReport:
    """What the ``stats`` operation answers."""

    router_id: str
    led_s: float
    """Seconds this router has led since it started: the total rates' denominator."""
    window_s: float | None
    """The last full window's length; None before the first one ends."""
    methods: list[MethodFigures]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    at: float
    counts: dict[tuple[str, str], MethodCalls]


def quantile(q: float, bounds: tuple[float, ...], buckets: tuple[int, ...]) -> float | None:
    """The ``q`` quantile of the durations counted in ``buckets`` (not cumulative, the last
    one past every bound); None when nothing was counted."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(buckets):
        if below + count >= rank and count:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / count
        below += count
    return bounds[-1]


def figures(counted: MethodCalls, seconds: float) -> CallFigures:
    """``counted``'s calls as figures over ``seconds``."""
    calls = sum(counted.outcomes.values())
    errors = calls - counted.outcomes.get("ok", 0)
    p50, p90, p99 = (quantile(q, counted.bounds, counted.buckets) for q in QUANTILES)
    return CallFigures(
        calls=calls,
        errors=errors,
        rate=calls / seconds if seconds > 0 else 0.0,
        error_rate=errors / calls if calls else None,
        p50_s=p50,
        p90_s=p90,
        p99_s=p99,
        outcomes=dict(counted.outcomes),
    )


def since(now: MethodCalls, then: MethodCalls | None) -> MethodCalls:
    """What was counted between two snapshots of one pair."""
    if then is None:
        return now
    before: Mapping[str, int] = then.outcomes
    return MethodCalls(
        service=now.service,
        method=now.method,
        outcomes={k: v - before.get(k, 0) for k, v in now.outcomes.items()},
        bounds=now.bounds,
        buckets=tuple(a - b for a, b in zip(now.buckets, then.buckets, strict=True)),
        seconds=now.seconds - then.seconds,
    )


class CallStatistics:
    """Answers ``stats`` from the counters; snapshots them every ``window`` seconds while
    this router leads. One per router process (the counters are), started and stopped with
    each leadership term.

    Args:
        counters: the router's counters.
        clock: the monotonic clock the windows and the time led are measured on.
        router_id: this router, named in the report.
        window: seconds between snapshots.
    """

    def __init__(
        self,
        counters: RouterMetrics,
        clock: Clock,
        router_id: str,
        *,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self._counters = counters
        self._clock = clock
        self._router_id = router_id
        self._window = window
        self._led = 0.0
        self._since: float | None = None
        self._snapshots: list[_Snapshot] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """A term began: count the time led, and take a snapshot every window."""
        if self._task is not None:
            return
        self._since = self._clock.monotonic()
        self.snapshot()
        self._task = asyncio.create_task(self._snapshot_every_window(), name="ipc-router-stats")

    async def stop(self) -> None:
        """The term ended: stop the snapshots (a window never spans time not led).
        Idempotent."""
        if self._since is not None:
            self._led += self._clock.monotonic() - self._since
            self._since = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._snapshots = []

    def led_s(self) -> float:
        """Seconds this router has led since it started."""
        current = self._clock.monotonic() - self._since if self._since is not None else 0.0
        return self._led + current

    def report(self, service: str | None = None) -> StatsReport:
        """Every counted pair's figures (only ``service``'s when given)."""
        led = self.led_s()
        window = self._snapshots[-2:] if len(self._snapshots) >= 2 else None
        window_s = window[1].at - window[0].at if window else None
        methods = []
        for counted in self._counters.call_counts():
            if service is not None and counted.service != service:
                continue
            in_window = None
            if window is not None and window_s:
                key = (counted.service, counted.method)
                end = window[1].counts.get(key)
                if end is not None:
                    in_window = figures(since(end, window[0].counts.get(key)), window_s)
                else:  # first counted after the window ended
                    in_window = figures(since(counted, counted), window_s)
            methods.append(
                MethodFigures(
                    service=counted.service,
                    method=counted.method,
                    total=figures(counted, led),
                    window=in_window,
                )
            )
        return StatsReport(router_id=self._router_id, led_s=led, window_s=window_s, methods=methods)

    def snapshot(self) -> None:
        """Record the counters as they are now (the last two are kept)."""
        counts = {(c.service, c.method): c for c in self._counters.call_counts()}
        self._snapshots = [*self._snapshots[-1:], _Snapshot(self._clock.monotonic(), counts)]

    async def _snapshot_every_window(self) -> None:
        while True:
            await asyncio.sleep(self._window)
            self.snapshot()
