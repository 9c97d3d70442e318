"""The instrumentation's cost per call, in microseconds: what the router's and a client's
metrics do for one call, timed in a loop (no NATS, no event loop).

    uv run python benchmarks/metrics_cost.py            # best of 5 runs of 200,000 calls
    uv run python benchmarks/metrics_cost.py --json

- router: ``call_answered`` of an ok reply (the outcome check and the counters);
- router refused: ``call_refused`` (a call the router answered itself);
- client call: ``call_done`` of a durable call;
- client handler: ``handler_done`` of one handler run.

Each figure is the best of the runs (the least disturbed by the machine's other work).
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from ipc_client_sdk._metrics import PrometheusClientMetrics
from ipc_client_sdk.protocol import CallReply, Codec, ErrorCode
from ipc_router.infrastructure.prometheus import PrometheusRouterMetrics


def cases() -> dict[str, Callable[[], None]]:
    """One call's instrumentation, by name."""
    router = PrometheusRouterMetrics()
    reply = Codec().encode_envelope(CallReply(call_id="c" * 26, payload=b"\x93\x01\x02\x03"))
    client = PrometheusClientMetrics(CollectorRegistry())
    seconds = [0.0004, 0.003, 0.02, 0.2]
    router.call_answered("orders", "place", reply, 0.001)  # labels bound before timing

    def answered() -> None:
        for s in seconds:
            router.call_answered("orders", "place", reply, s)

    def refused() -> None:
        for s in seconds:
            router.call_refused("orders", "place", ErrorCode.UNAVAILABLE, s)

    def call_done() -> None:
        for s in seconds:
            client.call_done("orders", "place", False, "ok", s)

    def handler_done() -> None:
        for s in seconds:
            client.handler_done("orders", "place", s)

    return {
        "router answered": answered,
        "router refused": refused,
        "client call": call_done,
        "client handler": handler_done,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = {}
    for name, case in cases().items():
        loops = args.calls // 4  # each loop counts four calls
        best = min(timeit.repeat(case, number=loops, repeat=args.runs))
        figures[name] = round(best / (loops * 4) * 1e6, 3)
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
        return
    for name, us in figures.items():
        sys.stdout.write(f"{name:<16} {us:7.3f} µs per call\n")


if __name__ == "__main__":
    main()
