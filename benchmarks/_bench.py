"""What the benchmark scripts share: their serving processes, the load and its figures."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ipc_router.infrastructure.process import ChildProcess


class Peer(ChildProcess):
    """A benchmark script run again as one of its serving processes."""

    def __init__(self, log_path: Path, script: str) -> None:
        super().__init__(log_path)
        self.script = script

    async def start(self, *args: str) -> None:
        """Run ``<script> <args>`` and wait until it prints ``serving``."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.spawn([sys.executable, self.script, *args], env=env)
        if not await self.wait_for_output("serving", timeout=60):
            raise RuntimeError(f"{args[0]} did not start: {self.log_tail(5)}")


def rss_kib(pid: int | None) -> int:
    """A process's resident set size, in KiB (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1])


async def serve_until_term(ready: str = "serving") -> None:
    """Say ``ready`` on stdout, then wait for SIGTERM."""
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write(ready + "\n")
    sys.stdout.flush()
    await stop.wait()


@dataclass
class Result:
    """One path at one concurrency."""

    path: str
    concurrency: int
    calls: int
    failed: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_us: dict[str, float] = field(default_factory=dict)
    """CPU time (user + system) each process spent per call while it was measured, in µs."""


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of sorted values."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def cpu_seconds(pid: int | None) -> float:
    """A process's CPU time so far (user + system), in seconds (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    path: str,
    concurrency: int,
    one_call: Callable[[int], Awaitable[object]],
    duration: float,
    warmup: float,
    *,
    cpu_of: dict[str, int | None] | None = None,
) -> Result:
    """Run ``concurrency`` callers for ``warmup`` + ``duration`` seconds; time the latter.

    ``one_call(n)`` makes the n-th call; a call that raises counts as failed. ``cpu_of``
    names processes whose CPU time per call is measured over the timed part.
    """
    latencies: list[float] = []
    failures: list[BaseException] = []
    clock = time.perf_counter
    start = clock()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker(w: int) -> None:
        n = w
        while True:
            sent = clock()
            if sent >= stop_at:
                return
            try:
                await one_call(n)
            except Exception as e:
                failures.append(e)
            else:
                if sent >= measure_from:
                    latencies.append(clock() - sent)
            n += concurrency

    cpu_start: dict[str, float] = {}

    async def snapshot() -> None:
        await asyncio.sleep(max(0.0, measure_from - clock()))
        cpu_start.update({name: cpu_seconds(pid) for name, pid in (cpu_of or {}).items()})

    sampler = asyncio.create_task(snapshot())
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = clock() - measure_from
    await sampler
    cpu_us = {
        name: round((cpu_seconds(pid) - cpu_start[name]) / max(1, len(latencies)) * 1e6, 1)
        for name, pid in (cpu_of or {}).items()
    }
    latencies.sort()
    if failures:
        print(f"  {path} x{concurrency}: {len(failures)} failed, first: {failures[0]!r}")
    return Result(
        path=path,
        concurrency=concurrency,
        calls=len(latencies),
        failed=len(failures),
        seconds=round(elapsed, 3),
        per_second=round(len(latencies) / elapsed, 1),
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        p999_ms=round(percentile(latencies, 0.999) * 1000, 3),
        cpu_us=cpu_us,
    )


def median_result(runs: list[Result]) -> Result:
    """One result from repeated runs of one path and level: each figure's median (calls and
    failures are summed)."""

    def mid(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    first = runs[0]
    return Result(
        path=first.path,
        concurrency=first.concurrency,
        calls=sum(r.calls for r in runs),
        failed=sum(r.failed for r in runs),
        seconds=round(sum(r.seconds for r in runs), 3),
        per_second=mid([r.per_second for r in runs]),
        p50_ms=mid([r.p50_ms for r in runs]),
        p99_ms=mid([r.p99_ms for r in runs]),
        p999_ms=mid([r.p999_ms for r in runs]),
        cpu_us={name: mid([r.cpu_us[name] for r in runs]) for name in first.cpu_us},
    )
