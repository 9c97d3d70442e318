"""Quiet logs: a flood of one problem costs one line per interval, and no field a peer
supplies can make a line long or forge another."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ipc_client_sdk.protocol import RateLimitedLog, clip
from ipc_testing.waiting import until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def quiet(clock: FakeClock) -> RateLimitedLog:
    return RateLimitedLog(logging.getLogger("test.quiet"), interval=10.0, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.quiet"]


def test_the_first_occurrence_is_logged_at_once(
    quiet: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    quiet.warning("junk", "junk call on %s", "ipc.call.a.b")
    assert lines(caplog) == ["junk call on ipc.call.a.b"]
    assert caplog.records[0].levelno == logging.WARNING


def test_a_flood_costs_one_summary_line_per_interval(
    quiet: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(10_000):
        quiet.warning("junk", "junk call %d", i)
        clock.now += 0.0005  # 10,000 in 5 s
    assert lines(caplog) == ["junk call 0"]
    assert quiet.suppressed == 9_999
    clock.now = 1010.0
    quiet.flush()
    assert lines(caplog)[1:] == ["9,999 more like it in the last 10 s, the latest: junk call 9999"]
    assert quiet.suppressed == 0


def test_a_steady_flood_keeps_one_line_per_interval(
    quiet: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(60 * 100):  # 100 a second for a minute, no event loop: summaries late
        quiet.warning("junk", "junk")
        clock.now += 0.01
    clock.now += 10
    quiet.flush()
    assert 6 <= len(lines(caplog)) <= 8
    counted = sum(int(line.split()[0].replace(",", "")) for line in lines(caplog)[1:])
    assert counted + 1 == 6000


def test_after_a_quiet_interval_the_next_occurrence_is_logged_at_once(
    quiet: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    quiet.warning("junk", "first")
    clock.now += 10.0
    quiet.warning("junk", "second")
    assert lines(caplog) == ["first", "second"]


def test_kinds_are_limited_separately(
    quiet: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        quiet.warning("junk", "junk call")
        quiet.warning("long-reply", "long reply address")
    assert lines(caplog) == ["junk call", "long reply address"]
    assert quiet.suppressed == 4


def test_the_summary_keeps_the_highest_level_held_back(
    quiet: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    quiet.warning("k", "a")
    quiet.error("k", "b")
    quiet.warning("k", "c")
    clock.now += 10
    quiet.flush()
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.ERROR]
    assert lines(caplog)[1] == "2 more like it in the last 10 s, the latest: c"


def test_only_the_written_line_carries_the_traceback(
    quiet: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            quiet.exception("bug", "handler failed")
    clock.now += 10
    quiet.flush()
    assert [r.exc_info is not None and r.exc_info[0] is RuntimeError for r in caplog.records] == [
        True,
        False,
    ]


def test_the_number_of_kinds_is_bounded(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    quiet = RateLimitedLog(logging.getLogger("test.quiet"), max_kinds=4, clock=clock)
    for i in range(1000):
        quiet.warning(f"kind-{i}", "problem %d", i)
    # Four kinds get a line each; the rest share one more.
    assert lines(caplog) == [f"problem {i}" for i in range(5)]
    assert quiet.suppressed == 995
    assert len(quiet._windows) <= 5
    clock.now += 10
    quiet.warning("kind-new", "fresh")  # the quiet kinds are forgotten: room again
    assert lines(caplog)[-1] == "fresh"


def test_a_disabled_level_costs_nothing(
    quiet: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="test.quiet")
    quiet.warning("junk", "junk")
    assert lines(caplog) == [] and quiet.suppressed == 0


async def test_with_an_event_loop_the_summary_comes_when_the_interval_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet = RateLimitedLog(logging.getLogger("test.quiet"), interval=0.05)
    for i in range(100):
        quiet.warning("junk", "junk %d", i)
    await until(lambda: len(lines(caplog)) == 2, within=5)
    assert lines(caplog)[1].startswith("99 more like it in the last ")
    assert lines(caplog)[1].endswith(" s, the latest: junk 99")
    await asyncio.sleep(0)  # nothing more is due
    assert quiet.suppressed == 0


def test_clip_keeps_a_short_value() -> None:
    assert clip("ipc.call.svc.m") == "ipc.call.svc.m"
    assert clip(None) == "None"


def test_clip_bounds_a_long_value_and_says_how_long_it_was() -> None:
    reply = "r" * 61_440
    clipped = clip(reply)
    assert clipped == "r" * 200 + "... (61,440 characters)"
    assert len(clip(reply, limit=20)) < 50


def test_clip_escapes_what_could_forge_a_log_line() -> None:
    assert clip("a\nWARNING forged\r\x00\u2028") == "a\\x0aWARNING forged\\x0d\\x00\\u2028"
    escaped = clip("\n" * 300)
    assert "\n" not in escaped and escaped.endswith("... (300 characters)")
    assert len(escaped) < 230
