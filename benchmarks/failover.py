"""Failover benchmark: how long a kill -9 of the active interrupts a steady call load.

    uv run python benchmarks/failover.py [--rounds 5] [--heartbeat-timeout 1.5] [--json]

It starts its own nats-server, an ``ipc-router``, and two instances of ``service_b`` in
processes of their own, both claiming ``acc_1`` (the first is active, the second standby).
A caller in this process keeps ``--concurrency`` calls for ``acc_1`` in flight, each with a
30 s timeout. Each round kills the active with SIGKILL, waits until the standby serves,
then starts a fresh instance as the next standby; the next round kills the new active.

Per round it prints:

- **detect**: kill -> the router's ``health`` event marking the active unhealthy (at once
  when a call finds the dead process's inbox gone, else at the heartbeat timeout);
- **promote**: kill -> the ``role`` event making the standby active (never before the
  active's last heartbeat is a full timeout old: its lease must have run out);
- **first call**: kill -> the first call answered by the new active;
- **stalled**: the longest any call waited across the kill (its latency);
- **failed**: calls that ended in an error (``UNKNOWN``: the killed process had started
  the call and died before recording it, so whether it ran cannot be known);
- **dup runs**: call_ids whose handler started on more than one process (must be 0).

The detection time includes up to one heartbeat interval (0.5 s): the active's last
heartbeat may have reached the router just before the kill, or half a second before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path

from ipc_client_sdk import IPCClient, IPCError, RemoteError, RouterEvent, RouterEvents
from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess
from ipc_testing.instance import InstanceProcess, read_runs
from ipc_testing.router import RouterProcess
from ipc_testing.workload import WorkRequest, WorkResult


@dataclass
class Round:
    """What one kill cost."""

    killed: str
    promoted: str
    detect_s: float
    promote_s: float
    first_call_s: float
    stalled_s: float
    failed: int
    failed_codes: dict[str, int] = field(default_factory=dict)


@dataclass
class Load:
    """The steady stream of calls: completion times, who served, latencies, errors."""

    caller: IPCClient
    concurrency: int
    served: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, done, who)
    failed: list[tuple[float, IPCError]] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        async def worker() -> None:
            i = 0
            while self.running:
                i += 1
                request = WorkRequest(
                    account="acc_1", amount=Decimal(i) / 100, placed_at=datetime.now(UTC)
                )
                sent = time.monotonic()
                try:
                    result = await self.caller.call(
                        "service_b.do_work",
                        request,
                        resource_id="acc_1",
                        timeout=30,
                        returns=WorkResult,
                    )
                except IPCError as e:
                    self.failed.append((time.monotonic(), e))
                else:
                    self.served.append((sent, time.monotonic(), result.instance_id))

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))


async def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll ``predicate()`` until it is true."""
    until = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > until:
            raise TimeoutError("the failover did not happen within the timeout")
        await asyncio.sleep(0.005)


async def bench(rounds: int, heartbeat_timeout: float, concurrency: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ipc-failover-") as tmp:
        workdir = Path(tmp)
        server = NatsServerProcess(NatsServerConfig(store_dir=workdir / "nats", port=0))
        await server.start()
        router = RouterProcess(
            server.url,
            workdir / "router.log",
            args=("--heartbeat-timeout", str(heartbeat_timeout)),
        )
        procs: list[InstanceProcess] = []
        try:
            await router.start()
            for name in ("i0", "i1"):
                proc = InstanceProcess(server.url, name, workdir, resources=("acc_1",))
                await proc.start()
                procs.append(proc)
            results = await _rounds(server.url, procs, workdir, rounds, concurrency)
        finally:
            for proc in procs:
                await proc.stop()
            await router.stop()
            await server.stop()
        runs = await asyncio.to_thread(count_runs, workdir)
    duplicates = sum(1 for n in runs.values() if n > 1)
    return {"rounds": results, "duplicate_runs": duplicates, "handler_runs": sum(runs.values())}


def count_runs(workdir: Path) -> Counter[str]:
    """Handler runs per call_id, over every instance's runs file."""
    return Counter(call_id for path in workdir.glob("*.runs") for call_id in read_runs(path))


def new_active_served(load: Load, instance_id: str, since: int, killed: float) -> bool:
    """Whether a call was answered by ``instance_id`` after the kill."""
    return any(who == instance_id and done > killed for _, done, who in load.served[since:])


async def _rounds(
    url: str, procs: list[InstanceProcess], workdir: Path, rounds: int, concurrency: int
) -> list[Round]:
    results: list[Round] = []
    async with (
        IPCClient(url, name="bench-caller") as caller,
        caller.admin.events(kinds={"health", "role"}) as stream,
    ):
        events: list[tuple[float, RouterEvent]] = []
        recording = asyncio.create_task(record(stream, events))
        load = Load(caller, concurrency)
        running = asyncio.create_task(load.run())
        try:
            for n in range(rounds):
                active, standby = procs[-2], procs[-1]
                await asyncio.sleep(1.0)  # steady state
                served_before = len(load.served)
                failed_before = len(load.failed)
                active.kill()
                killed = time.monotonic()
                await wait_for(
                    partial(new_active_served, load, standby.instance_id, served_before, killed),
                    60,
                )
                await asyncio.sleep(0.5)  # let the calls caught in the window finish
                detect = next(
                    (
                        t
                        for t, e in events
                        if t > killed
                        and e.kind == "health"
                        and e.instance_id == active.instance_id
                        and e.state == "unhealthy"
                    ),
                    float("nan"),
                )
                promote = next(
                    (
                        t
                        for t, e in events
                        if t > killed
                        and e.kind == "role"
                        and e.instance_id == standby.instance_id
                        and e.role == "active"
                    ),
                    float("nan"),
                )
                first = min(
                    done
                    for _, done, who in load.served[served_before:]
                    if who == standby.instance_id and done > killed
                )
                stalled = max(
                    done - sent for sent, done, _ in load.served[served_before:] if done > killed
                )
                errors = load.failed[failed_before:]
                codes = Counter(
                    str(e.code.value) if isinstance(e, RemoteError) else type(e).__name__
                    for _, e in errors
                )
                results.append(
                    Round(
                        killed=active.instance_id,
                        promoted=standby.instance_id,
                        detect_s=detect - killed,
                        promote_s=promote - killed,
                        first_call_s=first - killed,
                        stalled_s=stalled,
                        failed=len(errors),
                        failed_codes=dict(codes),
                    )
                )
                fresh = InstanceProcess(url, f"i{n + 2}", workdir, resources=("acc_1",))
                await fresh.start()
                procs.append(fresh)
        finally:
            load.running = False
            await running
            recording.cancel()
            await asyncio.gather(recording, return_exceptions=True)
    return results


async def record(stream: RouterEvents, into: list[tuple[float, RouterEvent]]) -> None:
    """Append each event with the time it arrived (monotonic), until cancelled."""
    async for event in stream:
        into.append((time.monotonic(), event))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--heartbeat-timeout", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    if args.rounds < 1 or args.concurrency < 1 or args.heartbeat_timeout <= 0:
        parser.error("--rounds and --concurrency must be >= 1, --heartbeat-timeout > 0")
    report = asyncio.run(bench(args.rounds, args.heartbeat_timeout, args.concurrency))
    rounds: list[Round] = report["rounds"]  # type: ignore[assignment]
    if args.json:
        out = {**report, "rounds": [asdict(r) for r in rounds]}
        json.dump(out, sys.stdout, indent=2)
        print()
        return
    print(
        f"failover after kill -9 of the active: heartbeat timeout {args.heartbeat_timeout}s, "
        f"{args.concurrency} calls in flight, {args.rounds} rounds"
    )
    header = ("round", "detect", "promote", "first call", "stalled", "failed")
    print("{:>5}  {:>8}  {:>8}  {:>10}  {:>8}  {}".format(*header))
    for i, r in enumerate(rounds, 1):
        failed = f"{r.failed} {r.failed_codes}" if r.failed else "0"
        print(
            f"{i:>5}  {r.detect_s:>7.3f}s  {r.promote_s:>7.3f}s  {r.first_call_s:>9.3f}s  "
            f"{r.stalled_s:>7.3f}s  {failed}"
        )

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.3f}s"

    print(
        f"median  detect {med([r.detect_s for r in rounds])}  promote "
        f"{med([r.promote_s for r in rounds])}  first call {med([r.first_call_s for r in rounds])}"
        f"  max first call {max(r.first_call_s for r in rounds):.3f}s"
    )
    print(
        f"failed calls {sum(r.failed for r in rounds)}, handler runs {report['handler_runs']}, "
        f"duplicate runs {report['duplicate_runs']}"
    )


if __name__ == "__main__":
    main()
