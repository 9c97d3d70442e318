"""Scale benchmark: routed calls with many instances and claimed resources, and the
router's memory over a long run.

    uv run python benchmarks/scale.py [--duration 5] [--calls 1000000] [--json]

It starts its own nats-server and ``ipc-router``, then runs two set-ups, each with a fresh
server and router, and the caller in this process at concurrency 200 on the durable path:

- **small**: 2 instances of ``accounts`` (in one process), both claiming 1 resource: the
  first owns it, the second stands by; every call is for that resource;
- **large**: 100 instances (in 4 processes of 25), claiming 100 resources each (10,000
  claimed resources); each call is for a resource picked at random.

It prints each set-up's calls per second and latencies, and the ratio of large to small.
Then, on the large set-up, it keeps calling until ``--calls`` calls in all have been
answered and reads the router's resident memory (RSS) after the first 10,000 and at the end:
it must stay within 10 %. A million calls take several minutes (the durable path's rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from pydantic import BaseModel

from _bench import Peer, Result, measure, rss_kib, serve_until_term
from ipc_client_sdk import CallContext, IPCClient, Service
from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess
from ipc_testing.router import RouterProcess

SCRIPT = str(Path(__file__).resolve())
SERVICE = "accounts"
CONCURRENCY = 200
PER_PROCESS = 25
WARM_CALLS = 10_000


class Debit(BaseModel):
    """A small account operation."""

    account: str
    amount_cents: int
    reference: str


class Balance(BaseModel):
    """Its answer."""

    account: str
    instance_id: str


async def serve_many(url: str, first: int, count: int, per_instance: int, share: bool) -> None:
    """Serve ``count`` instances from one connection; instance n claims ``per_instance``
    resources (all of them the same ones when ``share``)."""
    svc = Service(SERVICE)

    @svc.method("debit")
    async def debit(req: Debit, ctx: CallContext) -> Balance:
        return Balance(account=req.account, instance_id=ctx.instance_id)

    async with IPCClient(url, name=f"scale-{first}") as client:
        for n in range(first, first + count):
            base = 0 if share else n * per_instance
            resources = [f"r{k}" for k in range(base, base + per_instance)]
            await client.serve(svc, instance_id=f"i{n}", resources=resources, concurrency=256)
        await serve_until_term()


async def setup(
    workdir: Path, processes: int, per_process: int, per_instance: int, share: bool
) -> tuple[NatsServerProcess, RouterProcess, list[Peer]]:
    """A fresh nats-server, router and instance processes."""
    server = NatsServerProcess(NatsServerConfig(store_dir=workdir / "nats", port=0))
    await server.start()
    router = RouterProcess(server.url, workdir / "router.log")
    await router.start()
    peers: list[Peer] = []
    for p in range(processes):
        peer = Peer(workdir / f"instances-{p}.log", SCRIPT)
        args = [str(p * per_process), str(per_process), str(per_instance), str(int(share))]
        await peer.start("serve-many", server.url, *args)
        peers.append(peer)
    return server, router, peers


async def teardown(server: NatsServerProcess, router: RouterProcess, peers: list[Peer]) -> None:
    for peer in peers:
        await peer.stop()
    await router.stop()
    await server.stop()


async def run(duration: float, total_calls: int, quiet: bool) -> dict[str, object]:
    out: dict[str, object] = {}
    results: list[Result] = []
    # small: 2 instances, 1 resource
    with tempfile.TemporaryDirectory(prefix="ipc-scale-small-") as tmp:
        server, router, peers = await setup(Path(tmp), 1, 2, 1, share=True)
        try:
            async with IPCClient(server.url, name="scale-caller") as client:

                async def small(n: int) -> object:
                    return await client.call(
                        f"{SERVICE}.debit",
                        Debit(account="r0", amount_cents=n, reference=f"ref-{n}"),
                        resource_id="r0",
                        returns=Balance,
                        timeout=30,
                        durable=True,
                    )

                results.append(await measure("small", CONCURRENCY, small, duration, 1.0))
        finally:
            await teardown(server, router, peers)
    # large: 100 instances, 10,000 resources
    processes = 100 // PER_PROCESS
    resources = 100 * 100
    with tempfile.TemporaryDirectory(prefix="ipc-scale-large-") as tmp:
        server, router, peers = await setup(Path(tmp), processes, PER_PROCESS, 100, share=False)
        try:
            async with IPCClient(server.url, name="scale-caller") as client:
                status = await client.admin.status()
                out["registered_instances"] = status.instances
                pick = random.Random(7)
                done = 0

                async def large(n: int) -> object:
                    nonlocal done
                    account = f"r{pick.randrange(resources)}"
                    result = await client.call(
                        f"{SERVICE}.debit",
                        Debit(account=account, amount_cents=n, reference=f"ref-{n}"),
                        resource_id=account,
                        returns=Balance,
                        timeout=30,
                        durable=True,
                    )
                    done += 1
                    return result

                results.append(await measure("large", CONCURRENCY, large, duration, 1.0))
                out["throughput"] = [asdict(r) for r in results]
                if not quiet:
                    print(table(results), flush=True)
                memory = await soak(router, large, lambda: done, total_calls, quiet)
                out["memory"] = memory
        finally:
            await teardown(server, router, peers)
    return out


async def soak(
    router: RouterProcess,
    one_call: Callable[[int], Awaitable[object]],
    done: Callable[[], int],
    total_calls: int,
    quiet: bool,
) -> dict[str, float]:
    """Keep calling until ``total_calls`` calls were answered; RSS after 10k and at the end."""
    rss: dict[str, float] = {}
    started = time.monotonic()
    failed = 0

    async def worker(w: int) -> None:
        nonlocal failed
        n = w
        while done() < total_calls:
            try:
                await one_call(n)
            except Exception:
                failed += 1
            if "after_10k_kib" not in rss and done() >= WARM_CALLS:
                rss["after_10k_kib"] = rss_kib(router.pid)
            n += CONCURRENCY

    async def progress() -> None:
        while True:
            await asyncio.sleep(30)
            print(
                f"  {done():,} calls, router RSS {rss_kib(router.pid) / 1024:.1f} MiB", flush=True
            )

    reporter = None if quiet else asyncio.create_task(progress())
    try:
        await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
    finally:
        if reporter is not None:
            reporter.cancel()
    rss["calls"] = done()
    rss["failed"] = failed
    rss["at_end_kib"] = rss_kib(router.pid)
    rss["growth"] = round(rss["at_end_kib"] / rss["after_10k_kib"] - 1, 4)
    rss["seconds"] = round(time.monotonic() - started, 1)
    return rss


def table(results: list[Result]) -> str:
    """Throughput and latency per set-up, with large as a ratio of small."""
    small = next((r for r in results if r.path == "small"), None)
    lines = [
        f"{'set-up':<8} {'calls/s':>9} {'vs small':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}"
    ]
    for r in results:
        ratio = r.per_second / small.per_second if small and small.per_second else float("nan")
        lines.append(
            f"{r.path:<8} {r.per_second:>9.0f} {ratio:>8.0%} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {r.failed:>6}"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse the command line and run the benchmark (or one of its serving processes)."""
    if len(sys.argv) > 1 and sys.argv[1] == "serve-many":
        url, first, count, per, share = sys.argv[2:7]
        asyncio.run(serve_many(url, int(first), int(count), int(per), share == "1"))
        return
    parser = argparse.ArgumentParser(prog="benchmarks/scale.py", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per set-up")
    parser.add_argument(
        "--calls", type=int, default=1_000_000, help="calls answered in all before the last RSS"
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    if args.duration <= 0 or args.calls < WARM_CALLS:
        parser.error(f"duration must be > 0 and calls >= {WARM_CALLS}")
    started = time.monotonic()
    out = asyncio.run(run(args.duration, args.calls, args.json))
    out["seconds"] = round(time.monotonic() - started, 1)
    memory = out["memory"]
    assert isinstance(memory, dict)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"router RSS: {memory['after_10k_kib'] / 1024:.1f} MiB after 10,000 calls, "
            f"{memory['at_end_kib'] / 1024:.1f} MiB after {int(memory['calls']):,} "
            f"({memory['growth']:+.1%}; target within 10 %: "
            f"{'met' if abs(memory['growth']) <= 0.10 else 'NOT MET'}); "
            f"{int(memory['failed'])} failed"
        )
        print(f"({out['seconds']:.0f}s in all)")
    if memory["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
