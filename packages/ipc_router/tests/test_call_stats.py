"""The ``stats`` operation's figures from the router's counters, with a fake clock: rates
over the time led and over the last window, error rates, percentiles from the buckets."""

from __future__ import annotations

import pytest

from ipc_client_sdk.protocol import DURATION_BUCKETS, ErrorCode
from ipc_router.application.stats import CallStatistics, quantile
from ipc_router.infrastructure.counters import RouterCounters
from ipc_testing.fakes import FakeClock

OK = b"\x82\xa7call_id\xa1c\xa7payload\xc0"  # a reply without an error


def test_quantiles_interpolate_inside_the_bucket_holding_the_rank() -> None:
    bounds = (0.1, 0.2, 0.4)
    assert quantile(0.5, bounds, (0, 0, 0, 0)) is None
    assert quantile(0.5, bounds, (10, 0, 0, 0)) == pytest.approx(0.05)
    assert quantile(0.5, bounds, (0, 10, 0, 0)) == pytest.approx(0.15)
    assert quantile(0.9, bounds, (5, 0, 5, 0)) == pytest.approx(0.2 + 0.2 * 0.8)
    assert quantile(0.99, bounds, (1, 0, 0, 9)) == 0.4  # past every bound: the highest one


async def test_figures_over_the_time_led_and_the_last_window() -> None:
    clock = FakeClock(1000.0)
    counters = RouterCounters()
    stats = CallStatistics(counters, clock, "r1", window=3600)
    stats.start()  # snapshot 1, empty
    try:
        clock.current += 10
        for _ in range(8):
            counters.call_answered("svc", "m", OK, 0.003)
        counters.call_refused("svc", "m", ErrorCode.UNAVAILABLE, 0.02)
        counters.call_refused("svc", "m", ErrorCode.UNAVAILABLE, 0.02)
        report = stats.report()
        assert (report.router_id, report.led_s, report.window_s) == ("r1", 10, None)
        [m] = report.methods
        assert (m.service, m.method, m.window) == ("svc", "m", None)
        assert (m.total.calls, m.total.errors, m.total.rate) == (10, 2, 1.0)
        assert m.total.error_rate == pytest.approx(0.2)
        assert m.total.outcomes == {"ok": 8, "unavailable": 2}
        assert m.total.p50_s is not None and 0.0025 < m.total.p50_s <= 0.005
        assert m.total.p99_s is not None and 0.01 < m.total.p99_s <= 0.025

        stats.snapshot()  # the window: [start, +10 s]
        clock.current += 10
        for _ in range(5):
            counters.call_answered("svc", "m", OK, 0.0004)
        counters.call_answered("svc", "other", OK, 0.0004)  # new since the last snapshot
        report = stats.report("svc")
        assert (report.led_s, report.window_s) == (20, 10)
        by_method = {m.method: m for m in report.methods}
        window = by_method["m"].window
        assert window is not None
        assert (window.calls, window.errors, window.rate) == (10, 2, 1.0)
        assert by_method["m"].total.calls == 15
        assert by_method["other"].window is not None and by_method["other"].window.calls == 0
        assert stats.report("nobody").methods == []
    finally:
        await stats.stop()

    clock.current += 100  # not leading: the time led stops, the window is forgotten
    report = stats.report()
    assert (report.led_s, report.window_s) == (20, None)
    assert report.methods[0].total.rate == 15 / 20
    await stats.stop()  # idempotent


def test_the_buckets_are_the_histograms() -> None:
    counters = RouterCounters()
    counters.call_answered("svc", "m", OK, DURATION_BUCKETS[0])  # on the bound: that bucket
    counters.call_answered("svc", "m", OK, 100.0)  # past every bound
    [counted] = counters.call_counts()
    assert counted.buckets[0] == 1 and counted.buckets[-1] == 1
    assert len(counted.buckets) == len(DURATION_BUCKETS) + 1
    assert counted.seconds == pytest.approx(100.0 + DURATION_BUCKETS[0])
