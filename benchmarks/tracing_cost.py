"""The tracing's cost per call, in microseconds: what the caller, the router and the
instance do for one durable call's trace, timed in a loop (no NATS, no event loop).

    uv run python benchmarks/tracing_cost.py            # best of 5 runs of 20,000 calls
    uv run python benchmarks/tracing_cost.py --json

Each case runs twice, in a process of its own: with the OpenTelemetry SDK's tracer provider
(``OTEL_PYTHON_TRACER_PROVIDER=sdk_tracer_provider``, as ``rpc.py --metrics`` runs the
router and the instance; no span processor, no exporter) and with none (OpenTelemetry not
imported).

- caller: ``sending_call`` around one call, the durable path's attributes set on it;
- router: ``continue_routed`` of a call with the caller's ``traceparent``, the instance
  set on it;
- router root: the same for a call without one (a caller that records nothing, as in
  ``rpc.py``): the router's span starts the trace;
- instance: ``serving_call`` of a call with the router's ``traceparent``, and the trace id
  the handler's ``CallContext`` carries;
- sdk span: the SDK's own floor, ``start_span`` with the router's attributes and ``end``.

Each figure is the best of the runs (the least disturbed by the machine's other work).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import timeit
from collections.abc import Callable

_CALL_ID = "c" * 26
_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def cases() -> dict[str, Callable[[], None]]:
    """One call's tracing, by name, in this process's set-up."""
    from ipc_client_sdk._tracing import (
        continue_routed,
        current_trace_id,
        sending_call,
        serving_call,
    )

    headers = {"traceparent": _TRACEPARENT, "Nats-Msg-Id": _CALL_ID}
    untraced = {"Nats-Msg-Id": _CALL_ID}

    def caller() -> None:
        with sending_call("orders", "place", _CALL_ID, None) as traced:
            if traced is not None:
                traced.set("ipc.path", "durable")
                traced.set("messaging.destination.name", "ipc.call.orders.place")

    def routed(carried: dict[str, str]) -> Callable[[], None]:
        def route() -> None:
            with continue_routed(
                carried, "orders", "place", _CALL_ID, "ipc.call.orders.place", 1
            ) as traced:
                if traced is not None:
                    traced.set("ipc.instance_id", "orders-1")

        return route

    def instance() -> None:
        with serving_call(headers, "orders", "place", _CALL_ID, "orders-1", 1):
            current_trace_id()

    found = {"caller": caller, "router": routed(headers), "router root": routed(untraced)}
    found["instance"] = instance
    if "OTEL_PYTHON_TRACER_PROVIDER" in os.environ:
        from opentelemetry import trace
        from opentelemetry.util.types import AttributeValue

        tracer = trace.get_tracer_provider().get_tracer("bench")
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "aegis_ipc",
            "rpc.service": "orders",
            "rpc.method": "place",
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.message.id": _CALL_ID,
            "messaging.destination.name": "ipc.call.orders.place",
            "ipc.delivery": 1,
        }

        def sdk_span() -> None:
            tracer.start_span(
                "route orders/place", kind=trace.SpanKind.CONSUMER, attributes=attributes
            ).end()

        found["sdk span"] = sdk_span
    return found


def measure(calls: int, runs: int) -> dict[str, float]:
    """Each case's best µs per call in this process."""
    figures = {}
    for name, case in cases().items():
        case()  # the tracer and the provider resolved before timing
        best = min(timeit.repeat(case, number=calls, repeat=runs))
        figures[name] = round(best / calls * 1e6, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        sys.stdout.write(json.dumps(measure(args.calls, args.runs)) + "\n")
        return
    figures: dict[str, dict[str, float]] = {}
    for setup in ("sdk provider", "no provider"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        if setup == "sdk provider":
            env["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"
        command = [sys.executable, __file__, "--measure"]
        command += ["--calls", str(args.calls), "--runs", str(args.runs)]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        figures[setup] = json.loads(out.stdout)
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
        return
    for setup, by_case in figures.items():
        for name, us in by_case.items():
            sys.stdout.write(f"{setup:<13} {name:<11} {us:7.2f} µs per call\n")


if __name__ == "__main__":
    main()
