"""Abuse benchmark: junk, a status soak, a full event store, and router failover.

    uv run python benchmarks/abuse.py [--sections failover,flood,soak,store] [--rounds 5]
        [--junk 10000] [--huge 300] [--status-requests 10000] [--status-rate 20]
        [--store-mib 48] [--router-args '--lease-ttl 5'] [--json]

Each section starts its own nats-server on a free loopback port, two ``ipc-router``
processes (the first leads, the second waits as standby) and one instance of
``service_b`` (``ipc_testing.instance``, which records every handler run) claiming
``acc_1``; this process keeps ``--concurrency`` calls for ``acc_1`` in flight with the
SDK's default timeout (5 s), so a call that waits longer than a caller would fails.

- **failover**: each of ``--rounds`` rounds kills the leading router with SIGKILL and
  reports the time from the kill to the first answered call sent after it, the longest
  any call waited across it, and the calls that failed; then it restarts the killed router
  as the next standby. Duplicate runs (call_ids whose handler ran twice) must be 0.
- **flood**: ``--junk`` unreadable calls and ``--huge`` calls whose reply address is
  60 KB, published into the calls stream; the leader's resident memory before and after,
  and the log bytes it wrote per 10,000 junk messages (and per huge message).
- **soak**: ``--status-requests`` ``ipc status`` requests at ``--status-rate`` per second
  (10,000 at 20/s: about 8.5 minutes); the server's JetStream consumer count (from its
  monitoring endpoint) before and after, the requests that failed, then one failover.
- **store**: a server whose JetStream store holds ``--store-mib`` MiB; 1 MiB events are
  published until the store refuses one (or twice its size was sent), while the calls go
  on; the calls that failed while it filled, and of 100 made after it was full.

The script measures the code it runs against: it does not assume a fix is in place.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from pydantic import BaseModel

from _bench import rss_kib
from ipc_client_sdk import IPCClient, IPCError, RemoteError
from ipc_client_sdk.protocol import REPLY_TO_HEADER, CallRequest, Codec, Subjects
from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess
from ipc_testing.instance import InstanceProcess, read_runs
from ipc_testing.router import RouterProcess
from ipc_testing.workload import WorkRequest, WorkResult

MiB = 1024 * 1024
SECTIONS = ("failover", "flood", "soak", "store")


@dataclass(frozen=True)
class SmallStore(NatsServerConfig):
    """A nats-server whose JetStream store is capped at ``max_file_store`` bytes."""

    max_file_store: int = 48 * MiB

    def render(self) -> str:
        """The base configuration with the store's cap."""
        base = NatsServerConfig.render(self)
        store = f'store_dir: "{self.store_dir / "jetstream"}"'
        return base.replace(store, f"{store}, max_file_store: {self.max_file_store}")


@dataclass
class Load:
    """Calls for acc_1, ``concurrency`` at a time, each with the client's default timeout."""

    caller: IPCClient
    concurrency: int
    served: list[tuple[float, float]] = field(default_factory=list)  # (sent, done)
    failed: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, done, why)
    inflight: dict[int, float] = field(default_factory=dict)  # worker -> sent
    running: bool = True

    async def run(self) -> None:
        """Call until ``running`` is False."""

        async def worker(w: int) -> None:
            i = 0
            while self.running:
                i += 1
                request = WorkRequest(
                    account="acc_1", amount=Decimal(i) / 100, placed_at=datetime.now(UTC)
                )
                sent = self.inflight[w] = time.monotonic()
                try:
                    await self.caller.call(
                        "service_b.do_work", request, resource_id="acc_1", returns=WorkResult
                    )
                except IPCError as e:
                    why = str(e.code.value) if isinstance(e, RemoteError) else type(e).__name__
                    self.failed.append((sent, time.monotonic(), why))
                else:
                    self.served.append((sent, time.monotonic()))
                finally:
                    del self.inflight[w]

        await asyncio.gather(*(worker(w) for w in range(self.concurrency)))

    def failures_between(self, start: float, end: float) -> Counter[str]:
        """Calls that failed with a send time in [start, end), by code."""
        return Counter(why for sent, _, why in self.failed if start <= sent < end)


@dataclass
class Deployment:
    """One server, two routers (``routers[leader]`` leads), one instance, a caller."""

    server: NatsServerProcess
    routers: list[RouterProcess]
    instance: InstanceProcess
    caller: IPCClient
    raw: NATS
    """A plain connection, for what no client of the SDK would send."""
    load: Load
    leader: int = 0

    async def wait_leads(self, index: int, since: int, timeout: float = 30.0) -> None:
        """Wait until ``routers[index]`` logs that it leads (after ``since`` in its log)."""
        router = self.routers[index]
        text = f"{router.router_id} leads"
        if not await router.wait_for_output(text, since=since, timeout=timeout):
            raise RuntimeError(f"{router.router_id} did not lead: {router.log_tail(5)}")

    def consumers(self) -> int:
        """JetStream consumers on the server now (its monitoring endpoint)."""
        port = self.server.config.monitor_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=5) as answer:
            return int(json.load(answer)["consumers"])

    def duplicate_runs(self) -> int:
        """call_ids the instance ran more than once."""
        runs = Counter(read_runs(self.instance.runs_path))
        return sum(1 for n in runs.values() if n > 1)


@asynccontextmanager
async def deployment(
    workdir: Path,
    args: argparse.Namespace,
    config: NatsServerConfig | None = None,
    caps: tuple[str, ...] = (),
) -> AsyncIterator[Deployment]:
    """Start everything, keep the load running, stop everything on the way out."""
    server = NatsServerProcess(config or NatsServerConfig(store_dir=workdir / "nats", port=0))
    router_args = (*caps, *args.router_args.split())
    concurrency = args.concurrency
    await server.start()
    routers = [
        RouterProcess(server.url, workdir / f"{name}.log", router_id=name, args=router_args)
        for name in ("router-a", "router-b")
    ]
    instance = InstanceProcess(server.url, "i0", workdir, resources=("acc_1",))
    try:
        for router in routers:
            await router.start()
        await instance.start()
        raw = await nats.connect(server.url, name="bench-raw")
        async with IPCClient(server.url, name="bench-caller") as caller:
            load = Load(caller, concurrency)
            running = asyncio.create_task(load.run())
            d = Deployment(server, routers, instance, caller, raw, load)
            await d.wait_leads(0, 0)
            try:
                yield d
            finally:
                load.running = False
                await running
                await raw.close()
    finally:
        await instance.stop()
        for router in routers:
            await router.stop()
        await server.stop()


@dataclass
class Failover:
    """One kill -9 of the leading router."""

    killed: str
    led: str
    lead_s: float
    """Kill -> the standby logs that it leads (polled every 10 ms)."""
    first_call_s: float
    """Kill -> the first answer to a call sent after the kill."""
    stalled_s: float
    """The longest a call waited across the kill (answered or failed)."""
    failed: dict[str, int]


async def failover_once(d: Deployment) -> Failover:
    """Kill the leader, wait for the standby to lead and answer, restart the killed one."""
    old, new = d.routers[d.leader], d.routers[1 - d.leader]
    since = new.log_size()
    await asyncio.sleep(1.0)  # the scenario: a steady load before the kill
    killed = time.monotonic()
    old.kill()
    led = asyncio.create_task(d.wait_leads(1 - d.leader, since))
    await _until(lambda: any(sent > killed for sent, _ in d.load.served), 30)
    await led
    led_at = time.monotonic()  # lead_s is bounded by the first call: see below
    await _until(lambda: all(sent > killed for sent in d.load.inflight.values()), 30)
    first = min(done for sent, done in d.load.served if sent > killed)
    after = [(s, e) for s, e in d.load.served if e > killed] + [
        (s, e) for s, e, _ in d.load.failed if e > killed
    ]
    lead_line = await _lead_time(new, since, killed)
    d.leader = 1 - d.leader
    await old.stop()
    await old.start()  # the next standby
    return Failover(
        killed=old.router_id,
        led=new.router_id,
        lead_s=lead_line if lead_line is not None else led_at - killed,
        first_call_s=first - killed,
        stalled_s=max(e - s for s, e in after),
        failed=dict(d.load.failures_between(killed - 5.0, time.monotonic())),
    )


async def _lead_time(router: RouterProcess, since: int, killed: float) -> float | None:
    """When the router logged that it leads, from the log line's clock (None: not found).

    The log's timestamps are wall-clock; the kill's monotonic time is mapped onto it."""
    wall_killed = time.time() - (time.monotonic() - killed)
    for line in router.log_since(since).decode(errors="replace").splitlines():
        if f"{router.router_id} leads" in line:
            stamp = line.split(" ", 2)[:2]
            try:
                at = datetime.fromisoformat(" ".join(stamp).replace(",", ".")).timestamp()
            except ValueError:
                return None
            return at - wall_killed
    return None


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll ``predicate()`` every 5 ms until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout:g}s")
        await asyncio.sleep(0.005)


async def bench_failover(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    async with deployment(workdir, args) as d:
        rounds = [await failover_once(d) for _ in range(args.rounds)]
        duplicates = d.duplicate_runs()
    return {
        "rounds": [r.__dict__ for r in rounds],
        "median_first_call_s": round(statistics.median(r.first_call_s for r in rounds), 3),
        "max_first_call_s": round(max(r.first_call_s for r in rounds), 3),
        "failed_calls": sum(sum(r.failed.values()) for r in rounds),
        "duplicate_runs": duplicates,
    }


async def bench_flood(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    async with deployment(workdir, args) as d:
        router = d.routers[d.leader]
        subject = Subjects().call("service_b", "do_work", "bench-raw")
        codec = Codec()
        huge_reply = "x" * 60_000
        results: dict[str, Any] = {}
        for kind, count in (("junk", args.junk), ("huge_reply", args.huge)):
            rss, log = rss_kib(router.pid), router.log_size()
            started = time.monotonic()
            for i in range(count):
                if kind == "junk":
                    body, headers = f"junk {i}".encode(), None
                else:
                    request = CallRequest(
                        call_id=f"flood-{i}",
                        service="service_b",
                        method="do_work",
                        payload=b"",
                        reply_to=huge_reply,
                    )
                    body = codec.encode_envelope(request)
                    headers = {REPLY_TO_HEADER: huge_reply}
                await d.raw.publish(subject, body, headers=headers)
                if i % 50 == 49:
                    await d.raw.flush()  # keep the outbound buffer small
            await d.raw.flush()
            await _drained(d)
            written = router.log_size() - log
            results[kind] = {
                "messages": count,
                "seconds": round(time.monotonic() - started, 2),
                "router_rss_kib_before": rss,
                "router_rss_kib_after": rss_kib(router.pid),
                "log_bytes": written,
                "log_bytes_per_10000": round(written * 10_000 / max(count, 1)),
                "log_bytes_per_message": round(written / max(count, 1)),
            }
        results["calls_failed"] = dict(d.load.failures_between(0, time.monotonic()))
    return results


async def _drained(d: Deployment, timeout: float = 120.0) -> None:
    """Wait until the leader has taken every message of the calls stream."""
    js = d.raw.jetstream()
    subjects = Subjects()

    async def drained() -> bool:
        info = await js.consumer_info(subjects.calls_stream, subjects.calls_consumer)
        return bool(info.num_pending == 0 and info.num_ack_pending <= d.load.concurrency)

    deadline = time.monotonic() + timeout
    while not await drained():
        if time.monotonic() > deadline:
            raise TimeoutError("the router did not take the flood within the timeout")
        await asyncio.sleep(0.1)


async def bench_soak(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    async with deployment(workdir, args) as d:
        before = d.consumers()
        failed: Counter[str] = Counter()
        started = time.monotonic()
        peak = before
        for i in range(args.status_requests):
            delay = started + i / args.status_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await d.caller.admin.status()
            except IPCError as e:
                failed[type(e).__name__] += 1
            if i % 500 == 0:
                peak = max(peak, d.consumers())
        after = d.consumers()
        failover = await failover_once(d)
        return {
            "status_requests": args.status_requests,
            "rate_per_s": args.status_rate,
            "seconds": round(time.monotonic() - started, 1),
            "failed": dict(failed),
            "consumers_before": before,
            "consumers_peak": max(peak, after),
            "consumers_after": after,
            "failover_after": failover.__dict__,
        }


class Filler(BaseModel):
    """One event of about 1 MiB."""

    blob: bytes


async def bench_store(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    config = SmallStore(store_dir=workdir / "nats", port=0, max_file_store=args.store_mib * MiB)
    # The router's caps must fit the small store (it refuses to start otherwise): events get
    # half of it, the rest a few MiB each.
    caps = (
        f"--events-max-bytes={args.store_mib // 2}MiB",
        "--calls-max-bytes=4MiB",
        "--dead-letters-max-bytes=1MiB",
        "--registry-max-bytes=1MiB",
        "--routes-max-bytes=1MiB",
        "--contracts-max-bytes=1MiB",
        "--leases-max-bytes=64KiB",
        "--results-max-bytes=4MiB",
    )
    async with deployment(workdir, args, config, caps) as d:
        event = Filler(blob=b"x" * (MiB - 1024))
        started = time.monotonic()
        published, refusal = 0, ""
        for _ in range(2 * args.store_mib):
            try:
                await d.caller.publish("bench.fill", event, timeout=10)
            except IPCError as e:
                refusal = f"{type(e).__name__}: {e}"[:200]
                break
            published += 1
        full = time.monotonic()
        during = d.load.failures_between(started, full)
        after: Counter[str] = Counter()
        for i in range(100):
            request = WorkRequest(account="acc_1", amount=Decimal(i), placed_at=datetime.now(UTC))
            try:
                await d.caller.call("service_b.do_work", request, resource_id="acc_1")
            except IPCError as e:
                after[str(e.code.value) if isinstance(e, RemoteError) else type(e).__name__] += 1
        try:
            leads = (await d.caller.admin.status()).leader is not None
        except IPCError:
            leads = False
        return {
            "store_mib": args.store_mib,
            "events_published": published,
            "publish_refused": refusal,
            "fill_seconds": round(full - started, 1),
            "calls_failed_while_filling": dict(during),
            "calls_answered_while_filling": sum(1 for s, _ in d.load.served if started <= s < full),
            "calls_failed_of_100_after": dict(after),
            "a_router_leads_after": leads,
        }


BENCHES = {
    "failover": bench_failover,
    "flood": bench_flood,
    "soak": bench_soak,
    "store": bench_store,
}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for section in args.sections:
        with tempfile.TemporaryDirectory(prefix=f"ipc-abuse-{section}-") as tmp:
            started = time.monotonic()
            report[section] = await BENCHES[section](Path(tmp), args)
            report[section]["section_seconds"] = round(time.monotonic() - started, 1)
    return report


def show(report: dict[str, Any]) -> None:
    """Print the figures for people."""
    if "failover" in report:
        f = report["failover"]
        print("router failover (kill -9 of the leader, calls with the default 5 s timeout):")
        print("round  killed    led       leads   first call  stalled  failed")
        for i, r in enumerate(f["rounds"], 1):
            print(
                f"{i:>5}  {r['killed']:<8}  {r['led']:<8}  {r['lead_s']:>5.3f}s  "
                f"{r['first_call_s']:>9.3f}s  {r['stalled_s']:>6.3f}s  {r['failed'] or 0}"
            )
        print(
            f"median first call {f['median_first_call_s']:.3f}s, max {f['max_first_call_s']:.3f}s;"
            f" failed calls {f['failed_calls']}, duplicate runs {f['duplicate_runs']}"
        )
    if "flood" in report:
        print("flood of junk calls (the leader's memory and log):")
        for kind in ("junk", "huge_reply"):
            k = report["flood"][kind]
            print(
                f"  {kind:<10} {k['messages']:>6} messages: RSS {k['router_rss_kib_before'] / 1024:.1f}"
                f" -> {k['router_rss_kib_after'] / 1024:.1f} MiB, log {k['log_bytes']:,} bytes "
                f"({k['log_bytes_per_10000']:,} per 10,000; {k['log_bytes_per_message']:,} per "
                f"message), {k['seconds']}s"
            )
    if "soak" in report:
        s = report["soak"]
        fo = s["failover_after"]
        print(
            f"status soak: {s['status_requests']} requests at {s['rate_per_s']}/s in "
            f"{s['seconds']}s, failed {s['failed'] or 0}; JetStream consumers "
            f"{s['consumers_before']} before, {s['consumers_peak']} at most, "
            f"{s['consumers_after']} after"
        )
        print(
            f"  failover after it: first call {fo['first_call_s']:.3f}s after the kill, "
            f"failed {fo['failed'] or 0}"
        )
    if "store" in report:
        s = report["store"]
        print(
            f"store of {s['store_mib']} MiB filled by events: {s['events_published']} events "
            f"accepted in {s['fill_seconds']}s ({s['publish_refused'] or 'never refused'})"
        )
        print(
            f"  calls failed while filling {s['calls_failed_while_filling'] or 0} "
            f"(answered {s['calls_answered_while_filling']}); of 100 after: "
            f"{s['calls_failed_of_100_after'] or 0} failed; a router leads: "
            f"{s['a_router_leads_after']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="failover rounds")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    parser.add_argument("--junk", type=int, default=10_000, help="unreadable calls")
    parser.add_argument("--huge", type=int, default=300, help="calls with a 60 KB reply address")
    parser.add_argument("--status-requests", type=int, default=10_000)
    parser.add_argument("--status-rate", type=float, default=20.0, help="per second")
    parser.add_argument("--store-mib", type=int, default=48, help="the small store's size")
    parser.add_argument(
        "--router-args",
        default="",
        help="extra flags for both routers, e.g. '--lease-ttl 5 --call-ack-wait 5'",
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    args.sections = [s for s in args.sections.split(",") if s]
    if unknown := set(args.sections) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if min(args.rounds, args.concurrency, args.status_requests, args.store_mib) < 1:
        parser.error("--rounds, --concurrency, --status-requests and --store-mib must be >= 1")
    if args.status_rate <= 0 or args.junk < 0 or args.huge < 0:
        parser.error("--status-rate must be > 0, --junk and --huge >= 0")
    report = asyncio.run(bench(args))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        show(report)


if __name__ == "__main__":
    main()
