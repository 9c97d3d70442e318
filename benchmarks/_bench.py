"""What the benchmark scripts share: their serving processes, the load and its figures."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of sorted values."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def measure(
    path: str,
    concurrency: int,
    one_call: Callable[[int], Awaitable[object]],
    duration: float,
    warmup: float,
) -> Result:
    """Run ``concurrency`` callers for ``warmup`` + ``duration`` seconds; time the latter.

    ``one_call(n)`` makes the n-th call; a call that raises counts as failed.
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

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = clock() - measure_from
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
    )
