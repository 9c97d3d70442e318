"""RPC benchmark: AegisIPC's call paths against raw nats-py request/reply, FastStream's NATS
RPC and a bare nats-py floor of the durable protocol, in one run.

    uv run python benchmarks/rpc.py [--duration 3] [--rounds 3] [--paths raw,durable,...]
                                    [--concurrency 1,200] [--routers 2] [--metrics] [--json]

It starts its own nats-server (JetStream on, file storage), then measures, with the same
order-like payload (about 200 bytes of MessagePack) and the caller in this process:

- **raw**: what a program using nats-py alone does: MessagePack-pack the order as plain
  values, ``nc.request`` it to a plain nats-py responder in a process of its own (which
  answers with a fixed acknowledgement), unpack the answer. No validation, no envelope: the
  physical limit of this stack;
- **durable**: ``client.call(...)`` through ``--routers`` ``ipc-router`` processes (2 by
  default: the first leads, the second routes too as a standby; each one's CPU is printed,
  ``router`` and ``router2``, and the run ends with each one's share of the forwarded
  calls) to a served instance in a process of its own: accepted into JetStream, claimed
  and recorded in the results bucket, exactly once;
- **direct**: ``client.call(..., durable=False)``: a core request straight to the owning
  instance, found in the SDK's routing cache (at most once);
- **faststream**: FastStream's NATS RPC, the nearest peer: ``broker.request(order, ...)``
  to a FastStream subscriber in a process of its own that takes the ``Order`` and returns
  an ``OrderAck`` (Pydantic models, JSON on the wire), the answer validated into an
  ``OrderAck``. Core NATS, no durability, no router. Needs the benchmark-only dependency
  group (``uv sync --group bench``); without it the path is skipped with a printed reason;
- **bare**, **bare-fwd** (and, when named, **bare-seq**, **bare-1w**): the durable
  protocol written with bare nats-py and MessagePack (``bare_durable.py``), through a bare
  router and a bare instance in processes of their own: the floor of the durable path.
  ``bare`` is today's shape (the router relays the answer); ``bare-fwd`` has the router
  forward the call with the caller's reply address and the ack subject, the instance
  answer and ack, and the outcome written while the answer goes out; ``bare-seq`` is
  ``bare-fwd`` with the outcome written before the answer, ``bare-1w`` ``bare-fwd`` with
  one write (the outcome created once, no claim). ``durable`` is also printed as a ratio
  to each floor measured in the same run.

Each path runs at concurrency 1 (latency) and 200 (throughput) for ``--duration`` seconds
after a short warm-up, ``--rounds`` times, the paths taking turns so that a change in the
machine's load hits them alike; each figure is the median over the rounds. It prints calls
per second, p50, p99 and p99.9, each figure's ratio to raw measured in the same run, and
the CPU time each process spent per call (``router`` and ``instance`` are the bare ones
for the bare paths; ``responder`` is FastStream's for ``faststream``). Every call must
succeed: a failure is counted and
printed, and the script exits 1.

``--metrics`` measures what instrumentation costs: each AegisIPC path also runs as
``durable+m`` / ``direct+m`` through a second deployment on the same nats-server (its own
subject prefix), whose router serves ``/metrics`` (scraped every 5 s meanwhile) and whose
caller and instance keep SDK metrics (``IPCClient(metrics=True)``), and whose router and
instance record OpenTelemetry spans (the SDK's tracer provider, no exporter; the caller's
own span is not recorded, see ``Deployment.start``). Both deployments run in
the same rounds, taking turns, and the script prints each path's figures with metrics on
as a ratio to the same path with them off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import msgpack
import nats
from nats.aio.msg import Msg
from pydantic import BaseModel

from _bench import Peer, Result, measure, median_result, serve_until_term
from bare_durable import BareCaller
from ipc_client_sdk import CallContext, IPCClient, Service
from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess, free_port
from ipc_testing.router import RouterProcess

SERVICE = "orders"
METHOD = "place"
ACCOUNT = "acc_1"
RAW_SUBJECT = "bench.raw.place"
FASTSTREAM_SUBJECT = "bench.faststream.place"
BARE_INBOX = "bare.instance.o1"
BARE_MODES = {
    "bare": "relay",
    "bare-fwd": "forward",
    "bare-seq": "forward-seq",
    "bare-1w": "one-write",
}
"""The bare paths and the ``bare_durable`` mode each takes."""
PATHS = ("raw", "faststream", "durable", "direct", *BARE_MODES)
DEFAULT_PATHS = ("raw", "faststream", "durable", "direct", "bare", "bare-fwd")
METERED = "+m"
"""Suffix of a path measured through the deployment with metrics on (``--metrics``)."""
METRICS_PREFIX = "ipcm"
SCRAPE_EVERY = 5.0
SCRIPT = str(Path(__file__).resolve())
BARE_SCRIPT = str(Path(__file__).resolve().with_name("bare_durable.py"))


class Order(BaseModel):
    """An order-like request: exact prices, an aware timestamp (about 200 bytes)."""

    client_order_id: str
    account: str
    symbol: str
    side: str
    quantity: int
    price: Decimal
    time_in_force: str
    venue: str
    placed_at: datetime
    trader: str


class OrderAck(BaseModel):
    """The acknowledgement the handler returns."""

    client_order_id: str
    status: str
    filled: int
    price: Decimal
    instance_id: str


def make_order(n: int) -> Order:
    """The n-th order of a run."""
    return Order(
        client_order_id=f"C{n:012d}-desk7-strategy-alpha",
        account=ACCOUNT,
        symbol="AAPL.XNAS",
        side="buy",
        quantity=100 + n % 900,
        price=Decimal("187.4200"),
        time_in_force="IOC",
        venue="XNAS-primary",
        placed_at=datetime(2026, 11, 28, 9, 30, 0, 123456, tzinfo=UTC),
        trader="trader.jane.doe@desk7",
    )


def answer(order: Order, instance_id: str) -> OrderAck:
    """What the handler answers."""
    return OrderAck(
        client_order_id=order.client_order_id,
        status="accepted",
        filled=0,
        price=order.price,
        instance_id=instance_id,
    )


# --- the serving processes --------------------------------------------------------------
async def serve_raw(url: str) -> None:
    """A plain nats-py responder: answers every request with a fixed acknowledgement."""
    nc = await nats.connect(url, name="bench-raw-responder")
    ack = msgpack.packb(answer(make_order(0), "raw").model_dump(mode="json"))

    async def on_request(msg: Msg) -> None:
        await nc.publish(msg.reply, ack)

    await nc.subscribe(RAW_SUBJECT, cb=on_request, pending_msgs_limit=1_000_000)
    await nc.flush()
    await serve_until_term()
    await nc.drain()


async def serve_ipc(url: str, instance_id: str, prefix: str = "ipc", metrics: str = "") -> None:
    """An AegisIPC instance of ``orders`` claiming the account (with SDK metrics when
    ``metrics`` is ``on``)."""
    svc = Service(SERVICE)

    @svc.method(METHOD)
    async def place(order: Order, ctx: CallContext) -> OrderAck:
        return answer(order, ctx.instance_id)

    async with IPCClient(url, name=instance_id, prefix=prefix, metrics=metrics == "on") as client:
        instance = await client.serve(
            svc, instance_id=instance_id, resources=[ACCOUNT], concurrency=256
        )
        await serve_until_term()
        await instance.stop()


TRACER_VARIABLE = "OTEL_PYTHON_TRACER_PROVIDER"
"""Names the tracer provider OpenTelemetry's API loads in a process (the SDK's, here)."""


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the processes started meanwhile."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class FastStreamReply(Protocol):
    """What the caller uses of FastStream's ``NatsMessage``."""

    async def decode(self) -> Any: ...


class FastStreamBroker(Protocol):
    """What the benchmark uses of FastStream's ``NatsBroker`` (imported at run time: the
    ``bench`` dependency group is optional, so its types are not part of the type check)."""

    async def start(self) -> None: ...

    async def connect(self) -> Any: ...

    async def stop(self) -> None: ...

    async def request(self, message: Any, subject: str, *, timeout: float) -> FastStreamReply: ...

    def subscriber(self, subject: str) -> Callable[[Callable[..., Any]], Any]: ...


def faststream_broker(url: str) -> FastStreamBroker:
    """A FastStream NATS broker for ``url``, with its per-message log lines off (AegisIPC
    and raw log nothing per call either).

    Raises:
        ImportError: FastStream is not installed (``uv sync --group bench``).
    """
    module = importlib.import_module("faststream.nats")
    broker: FastStreamBroker = module.NatsBroker(url, logger=None)
    return broker


def faststream_missing() -> str | None:
    """Why the ``faststream`` path cannot run here, or None when it can."""
    try:
        importlib.import_module("faststream.nats")
    except ImportError as e:
        return f"faststream skipped: {e} (install it with `uv sync --group bench`)"
    return None


async def serve_faststream(url: str) -> None:
    """A FastStream app with one subscriber: takes the ``Order``, returns an ``OrderAck``."""
    broker = faststream_broker(url)

    @broker.subscriber(FASTSTREAM_SUBJECT)
    async def place(order: Order) -> OrderAck:
        return answer(order, "faststream")

    await broker.start()
    await serve_until_term()
    await broker.stop()


class Deployment:
    """``routers`` routers (the first leads; the others route too, as standbys), one
    instance process and one caller under a subject prefix."""

    def __init__(
        self, workdir: Path, url: str, prefix: str, *, metrics: bool, routers: int = 1
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.metrics = metrics
        self.metrics_port = free_port() if metrics else None
        self.routers: list[RouterProcess] = []
        self.router_ports: list[int] = []
        for n in range(routers):
            port = self.metrics_port if n == 0 and self.metrics_port else free_port()
            args = ["--prefix", prefix, "--metrics-port", str(port)]
            router_id = f"bench-{prefix}" if n == 0 else f"bench-{prefix}-{n + 1}"
            log = workdir / f"router-{prefix}-{n + 1}.log"
            self.routers.append(RouterProcess(url, log, router_id=router_id, args=tuple(args)))
            self.router_ports.append(port)
        self.peer = Peer(workdir / f"instance-{prefix}.log", SCRIPT)
        self.client: IPCClient | None = None

    @property
    def router(self) -> RouterProcess:
        """The leading router (started first)."""
        return self.routers[0]

    async def start(self) -> IPCClient:
        """Start the routers (the first leads) and the instance; connect the caller.

        With metrics on, the routers and the instance also record spans: the OpenTelemetry
        SDK's tracer provider with no exporter (``OTEL_PYTHON_TRACER_PROVIDER``). The caller
        runs in this process beside the other deployment's, so its own span is not
        recorded (a global provider would trace both deployments' callers alike).
        """
        tracing = {TRACER_VARIABLE: "sdk_tracer_provider"} if self.metrics else {}
        with environment(tracing):
            for router in self.routers:
                await router.start()
            await self.peer.start(
                "serve-ipc", self.url, "o1", self.prefix, "on" if self.metrics else "off"
            )
        self.client = IPCClient(
            self.url, name=f"bench-caller-{self.prefix}", prefix=self.prefix, metrics=self.metrics
        )
        return await self.client.connect()

    async def stop(self) -> None:
        """Stop what started."""
        if self.client is not None:
            await self.client.close()
        await self.peer.stop()
        for router in reversed(self.routers):
            await router.stop()

    async def scrape(self) -> int:
        """Read the leading router's ``/metrics`` once; its size in bytes (0: no metrics)."""
        if self.metrics_port is None:
            return 0
        return len(await _page(self.metrics_port))

    async def forwarded(self) -> dict[str, float]:
        """The calls each router has forwarded so far, by router id."""
        counts: dict[str, float] = {}
        for router, port in zip(self.routers, self.router_ports, strict=True):
            page = (await _page(port)).decode(errors="replace")
            found = re.search(r"^ipc_router_calls_forwarded_total (\S+)$", page, re.MULTILINE)
            counts[router.router_id] = float(found[1]) if found else math.nan
        return counts


async def _page(port: int) -> bytes:
    """One ``GET /metrics`` of the router serving ``port``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    page = await reader.read()
    writer.close()
    return page


async def bench(
    paths: list[str],
    levels: list[int],
    duration: float,
    warmup: float,
    rounds: int,
    *,
    metrics: bool = False,
    routers: int = 2,
    shares: dict[str, float] | None = None,
) -> list[Result]:
    """Measure every path at every level ``rounds`` times, interleaved (so that a change in
    the machine's load hits all paths alike), and keep each figure's median. With
    ``metrics``, each AegisIPC path is measured with metrics on as well (``<path>+m``)."""
    runs: dict[tuple[str, int], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="ipc-rpc-bench-") as tmp:
        workdir = Path(tmp)
        server = NatsServerProcess(NatsServerConfig(store_dir=workdir / "nats", port=0))
        await server.start()
        raw_peer = Peer(workdir / "raw.log", SCRIPT)
        fs_peer = Peer(workdir / "faststream.log", SCRIPT)
        bare_router = Peer(workdir / "bare-router.log", BARE_SCRIPT)
        bare_instance = Peer(workdir / "bare-instance.log", BARE_SCRIPT)
        bare_paths = [p for p in paths if p in BARE_MODES]
        fs_broker: FastStreamBroker | None = None
        plain = Deployment(workdir, server.url, "ipc", metrics=False, routers=routers)
        metered = Deployment(workdir, server.url, METRICS_PREFIX, metrics=True, routers=routers)
        deployments = {"": plain, METERED: metered} if metrics else {"": plain}
        orders = [make_order(n) for n in range(1000)]
        raw_orders = [o.model_dump(mode="json") for o in orders]  # plain values
        scraper: asyncio.Task[None] | None = None
        try:
            await raw_peer.start("serve-raw", server.url)
            clients = {suffix: await d.start() for suffix, d in deployments.items()}
            nc = await nats.connect(server.url, name="bench-raw-caller")
            if "faststream" in paths:
                await fs_peer.start("serve-faststream", server.url)
                fs_broker = faststream_broker(server.url)
                await fs_broker.connect()
            bare = BareCaller(nc)
            if bare_paths:
                await bare_router.start("serve-router", server.url, BARE_INBOX)
                await bare_instance.start("serve-instance", server.url, BARE_INBOX)
                await bare.start()
            if metrics:

                async def scrape_forever() -> None:
                    while True:
                        await asyncio.sleep(SCRAPE_EVERY)
                        await metered.scrape()

                scraper = asyncio.create_task(scrape_forever())
            try:

                async def raw_call(n: int) -> object:
                    # What a program using nats-py alone does: pack, request, unpack.
                    data = msgpack.packb(raw_orders[n % 1000])
                    msg = await nc.request(RAW_SUBJECT, data, timeout=10)
                    return msgpack.unpackb(msg.data)

                def ipc_call(
                    client: IPCClient, durable: bool
                ) -> Callable[[int], Awaitable[object]]:
                    async def one(n: int) -> object:
                        return await client.call(
                            f"{SERVICE}.{METHOD}",
                            orders[n % 1000],
                            resource_id=ACCOUNT,
                            returns=OrderAck,
                            timeout=10,
                            durable=durable,
                        )

                    return one

                def bare_call(mode: str) -> Callable[[int], Awaitable[object]]:
                    async def one(n: int) -> object:
                        return await bare.call(mode, ACCOUNT, raw_orders[n % 1000])

                    return one

                async def faststream_call(n: int) -> object:
                    assert fs_broker is not None
                    reply = await fs_broker.request(
                        orders[n % 1000], FASTSTREAM_SUBJECT, timeout=10
                    )
                    return OrderAck.model_validate(await reply.decode())

                calls: dict[str, Callable[[int], Awaitable[object]]] = {
                    "raw": raw_call,
                    "faststream": faststream_call,
                }
                calls.update({path: bare_call(mode) for path, mode in BARE_MODES.items()})
                for suffix, client in clients.items():
                    calls["durable" + suffix] = ipc_call(client, True)
                    calls["direct" + suffix] = ipc_call(client, False)
                for n in range(rounds):
                    # Metrics on and off take turns going first, so neither always runs
                    # in the wake of the other.
                    suffixes = list(deployments)[:: -1 if n % 2 else 1]
                    measured = [
                        path + suffix
                        for path in paths
                        for suffix in suffixes
                        if path.startswith(("durable", "direct")) or not suffix
                    ]
                    for level in levels:
                        for path in measured:
                            procs = {"caller": os.getpid(), "nats-server": server.pid}
                            deployment = metered if path.endswith(METERED) else plain
                            if path == "raw":
                                procs["responder"] = raw_peer.pid
                            elif path == "faststream":
                                procs["responder"] = fs_peer.pid
                            elif path in BARE_MODES:
                                procs["router"] = bare_router.pid
                                procs["instance"] = bare_instance.pid
                            else:
                                procs["instance"] = deployment.peer.pid
                            if path.startswith("durable"):
                                for n, router in enumerate(deployment.routers):
                                    procs["router" if n == 0 else f"router{n + 1}"] = router.pid
                            result = await measure(
                                path, level, calls[path], duration, warmup, cpu_of=procs
                            )
                            runs.setdefault((path, level), []).append(result)
                if shares is not None:
                    shares.update(await plain.forwarded())
            finally:
                if scraper is not None:
                    scraper.cancel()
                if fs_broker is not None:
                    await fs_broker.stop()
                await nc.close()
        finally:
            for deployment in deployments.values():
                await deployment.stop()
            for peer in (bare_instance, bare_router, fs_peer):
                await peer.stop()
            await raw_peer.stop()
            await server.stop()
    return [median_result(rs) for rs in runs.values()]


# --- reporting ----------------------------------------------------------------------------
def ratios(results: list[Result]) -> dict[tuple[str, int], dict[str, float]]:
    """Each result's throughput and latencies as a ratio to raw at the same concurrency."""
    raw = {r.concurrency: r for r in results if r.path == "raw"}
    out: dict[tuple[str, int], dict[str, float]] = {}
    for r in results:
        base = raw.get(r.concurrency)
        if base is None:
            continue
        out[(r.path, r.concurrency)] = {
            "per_second": _ratio(r.per_second, base.per_second),
            "p50": _ratio(r.p50_ms, base.p50_ms),
            "p99": _ratio(r.p99_ms, base.p99_ms),
            "p999": _ratio(r.p999_ms, base.p999_ms),
        }
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.nan


def table(results: list[Result]) -> str:
    """The results as a text table, with ratios to raw."""
    rel = ratios(results)
    lines = [
        f"{'path':<10} {'conc':>4} {'calls/s':>9} {'vs raw':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99 vs raw':>10} {'p99.9 ms':>9} {'failed':>6}"
    ]
    for r in results:
        ratio = rel.get((r.path, r.concurrency), {})
        lines.append(
            f"{r.path:<10} {r.concurrency:>4} {r.per_second:>9.0f} "
            f"{ratio.get('per_second', math.nan):>6.0%} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{ratio.get('p99', math.nan):>9.2f}x {r.p999_ms:>9.2f} {r.failed:>6}"
        )
    return "\n".join(lines)


def cpu_table(results: list[Result]) -> str:
    """CPU time per call, by process: where the work is."""
    names = ["caller", "responder", "router", "router2", "instance", "nats-server"]
    lines = [
        "CPU per call, µs (user + system):\n"
        + f"{'path':<10} {'conc':>4} "
        + " ".join(f"{n:>11}" for n in names)
        + f" {'total':>8}"
    ]
    for r in results:
        cells = " ".join(f"{r.cpu_us[n]:>11.0f}" if n in r.cpu_us else f"{'-':>11}" for n in names)
        lines.append(f"{r.path:<10} {r.concurrency:>4} {cells} {sum(r.cpu_us.values()):>8.0f}")
    return "\n".join(lines)


def share_line(shares: dict[str, float]) -> str:
    """Each router's share of the durable calls forwarded over the whole run."""
    total = sum(v for v in shares.values() if not math.isnan(v))
    if not total:
        return "durable calls forwarded by router: none counted"
    parts = [f"{router} {count / total:.0%} ({count:.0f})" for router, count in shares.items()]
    return "durable calls forwarded by router (the first leads): " + ", ".join(parts)


def metrics_cost(results: list[Result]) -> dict[tuple[str, int], dict[str, float]]:
    """Each path's figures with metrics on as a ratio to the same path with them off."""
    off = {(r.path, r.concurrency): r for r in results if not r.path.endswith(METERED)}
    out: dict[tuple[str, int], dict[str, float]] = {}
    for r in results:
        if not r.path.endswith(METERED):
            continue
        path = r.path.removesuffix(METERED)
        base = off.get((path, r.concurrency))
        if base is not None:
            out[(path, r.concurrency)] = {
                "per_second": _ratio(r.per_second, base.per_second),
                "p50": _ratio(r.p50_ms, base.p50_ms),
                "p99": _ratio(r.p99_ms, base.p99_ms),
                "cpu_per_call": _ratio(sum(r.cpu_us.values()), sum(base.cpu_us.values())),
            }
    return out


def metrics_lines(results: list[Result]) -> list[str]:
    """The instrumentation's cost, one line per path and level."""
    lines: list[str] = []
    for (path, level), ratio in sorted(metrics_cost(results).items()):
        lines.append(
            f"metrics on/off, {path} x{level}: throughput {ratio['per_second']:.3f} "
            f"(cost {1 - ratio['per_second']:+.1%}), p50 {ratio['p50']:.2f}x, "
            f"p99 {ratio['p99']:.2f}x, CPU per call {ratio['cpu_per_call']:.2f}x"
        )
    return lines


def durable_vs(results: list[Result]) -> dict[tuple[str, int], dict[str, float]]:
    """The durable path against its peers measured in the same run: each bare floor and
    FastStream, at each level (throughput and p50 as ratios, CPU per call in all)."""
    durable = {r.concurrency: r for r in results if r.path == "durable"}
    out: dict[tuple[str, int], dict[str, float]] = {}
    for r in results:
        mine = durable.get(r.concurrency)
        if mine is None or not (r.path in BARE_MODES or r.path == "faststream"):
            continue
        out[(r.path, r.concurrency)] = {
            "per_second": _ratio(mine.per_second, r.per_second),
            "p50": _ratio(mine.p50_ms, r.p50_ms),
            "cpu_per_call": _ratio(sum(mine.cpu_us.values()), sum(r.cpu_us.values())),
        }
    return out


def durable_lines(results: list[Result]) -> list[str]:
    """The durable path's distance from its floors and from FastStream, one line each."""
    return [
        f"durable vs {path} x{level}: throughput {ratio['per_second']:.2f}, "
        f"p50 {ratio['p50']:.2f}x, CPU per call {ratio['cpu_per_call']:.2f}x"
        for (path, level), ratio in sorted(durable_vs(results).items())
    ]


def targets(results: list[Result]) -> list[str]:
    """The issue's targets, each with its measured ratio and whether it was met."""
    rel = ratios(results)
    top = max((r.concurrency for r in results), default=0)
    lines: list[str] = []
    checks = [
        ("durable", top, "per_second", ">=", 0.5, "durable throughput vs raw"),
        ("durable", top, "p99", "<=", 3.0, f"durable p99 vs raw (x{top})"),
        ("durable", 1, "p99", "<=", 3.0, "durable p99 vs raw (x1)"),
        ("direct", top, "per_second", ">=", 0.9, "direct throughput vs raw"),
    ]
    for path, level, key, op, goal, label in checks:
        value = rel.get((path, level), {}).get(key)
        if value is None:
            continue
        met = value >= goal if op == ">=" else value <= goal
        lines.append(f"{label}: {value:.2f} (target {op} {goal:g}) {'met' if met else 'NOT MET'}")
    return lines


def protocol_targets(results: list[Result]) -> list[str]:
    """The durable protocol's targets (issue 17), each with its figure and whether it was
    met: against FastStream and the bare floor of the same protocol (``bare-fwd``) measured
    in the same run, the leader's CPU per call, and the direct path against raw."""
    found = {(r.path, r.concurrency): r for r in results}
    top = max((r.concurrency for r in results), default=0)
    lines: list[str] = []

    def check(label: str, value: float, op: str, goal: float, unit: str = "") -> None:
        met = value >= goal if op == ">=" else value <= goal
        lines.append(
            f"{label}: {value:.2f}{unit} (target {op} {goal:g}{unit}) "
            f"{'met' if met else 'NOT MET'}"
        )

    durable, durable_1 = found.get(("durable", top)), found.get(("durable", 1))
    faststream, floor = found.get(("faststream", top)), found.get(("bare-fwd", top))
    floor_1, raw = found.get(("bare-fwd", 1)), found.get(("raw", top))
    direct = found.get(("direct", top))
    if durable and faststream:
        check(
            f"durable vs faststream x{top} throughput",
            durable.per_second / faststream.per_second,
            ">=",
            1.0,
        )
    if durable and floor:
        check(
            f"durable vs bare-fwd x{top} throughput",
            durable.per_second / floor.per_second,
            ">=",
            0.9,
        )
    if durable_1:
        check("durable x1 p50", durable_1.p50_ms, "<=", 1.2, " ms")
        if floor_1:
            check("durable vs bare-fwd x1 p50", durable_1.p50_ms / floor_1.p50_ms, "<=", 1.15)
    if durable and "router" in durable.cpu_us:
        check(
            f"leading router CPU per durable call x{top}", durable.cpu_us["router"], "<=", 25, " µs"
        )
    if direct and raw:
        check(f"direct vs raw x{top} throughput", direct.per_second / raw.per_second, ">=", 0.6)
    return lines


def main() -> None:
    """Parse the command line and run the benchmark (or one of its serving processes)."""
    if len(sys.argv) > 1 and sys.argv[1] == "serve-raw":
        asyncio.run(serve_raw(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "serve-ipc":
        asyncio.run(serve_ipc(*sys.argv[2:6]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "serve-faststream":
        asyncio.run(serve_faststream(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(prog="benchmarks/rpc.py", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument(
        "--paths",
        default=",".join(DEFAULT_PATHS),
        help=f"comma-separated, of {', '.join(PATHS)} (default: {','.join(DEFAULT_PATHS)})",
    )
    parser.add_argument("--concurrency", default="1,200", help="comma-separated levels")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also measure each AegisIPC path with router and SDK metrics on (<path>+m)",
    )
    parser.add_argument(
        "--routers",
        type=int,
        default=2,
        help="routers of the AegisIPC deployment (the first leads, the others route too)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c]
    except ValueError:
        parser.error("--concurrency takes comma-separated integers")
    if args.routers < 1:
        parser.error("--routers must be >= 1")
    if not levels or min(levels) < 1 or args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("concurrency and rounds must be >= 1, duration > 0, warmup >= 0")
    skipped = faststream_missing() if "faststream" in paths else None
    if skipped is not None:
        paths.remove("faststream")
        print(skipped, file=sys.stderr if args.json else sys.stdout)
    started = time.monotonic()
    shares: dict[str, float] = {}
    results = asyncio.run(
        bench(
            paths,
            levels,
            args.duration,
            args.warmup,
            args.rounds,
            metrics=args.metrics,
            routers=args.routers,
            shares=shares,
        )
    )
    took = time.monotonic() - started
    if args.json:
        print(
            json.dumps(
                {
                    "results": [asdict(r) for r in results],
                    "ratios": {f"{p}@{c}": v for (p, c), v in ratios(results).items()},
                    "targets": targets(results),
                    "protocol_targets": protocol_targets(results),
                    "metrics_cost": {f"{p}@{c}": v for (p, c), v in metrics_cost(results).items()},
                    "durable_vs": {f"{p}@{c}": v for (p, c), v in durable_vs(results).items()},
                    "forwarded_by_router": shares,
                    "skipped": skipped,
                    "seconds": round(took, 1),
                },
                indent=2,
            )
        )
    else:
        print(table(results))
        print()
        print(cpu_table(results))
        report = durable_lines(results) + protocol_targets(results) + targets(results)
        for line in report + metrics_lines(results):
            print(line)
        print(share_line(shares))
        print(f"({took:.0f}s in all)")
    if any(r.failed for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
