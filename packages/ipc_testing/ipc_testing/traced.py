"""Processes that record OpenTelemetry spans into a file, for the trace tests.

- ``python -m ipc_testing.traced SPANS router ARGS...``: ``ipc-router ARGS...`` with a
  tracer provider (what ``opentelemetry-instrument`` gives an operator's router).
- ``python -m ipc_testing.traced SPANS serve NATS_URL``: serves ``traced.echo`` (instance
  ``t1``) and subscribes to ``traced.events.>`` (plain) and ``traced.durable.>`` (durable
  ``traced-durable``); prints ``serving`` once all are up, and stops on SIGTERM. The
  handlers start a span of their own (``echo work``, ``event work``) carrying the trace id
  their context names as attribute ``ctx.trace_id``.

Each finished span is one JSON line in ``SPANS`` (``read_spans`` reads them back).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from pydantic import BaseModel

from ipc_client_sdk import CallContext, EventContext, IPCClient, Service
from ipc_client_sdk.testing._router import RouterProcess
from ipc_router.infrastructure.process import ChildProcess

SERVICE = "traced"
METHOD = "echo"
EVENTS = "traced.events.>"
DURABLE_EVENTS = "traced.durable.>"


class Echo(BaseModel):
    """A request, or an event."""

    text: str


class Echoed(BaseModel):
    """``echo``'s answer: the text, and the trace id its ``CallContext`` named."""

    text: str
    trace_id: str | None


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished span, as the file keeps it."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    status: str
    attributes: dict[str, Any]


def record(span: ReadableSpan) -> SpanRecord:
    """The record of a finished span."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return SpanRecord(
        name=span.name,
        kind=span.kind.name,
        trace_id=trace.format_trace_id(context.trace_id),
        span_id=trace.format_span_id(context.span_id),
        parent_id=trace.format_span_id(parent.span_id) if parent is not None else None,
        status=span.status.status_code.name,
        attributes=dict(span.attributes or {}),
    )


def read_spans(path: Path) -> list[SpanRecord]:
    """The spans written to ``path`` so far."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [SpanRecord(**json.loads(line)) for line in lines if line]


class _FileExporter(SpanExporter):
    """Appends each span as one JSON line, with one unbuffered write."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            line = json.dumps(asdict(record(span)))
            os.write(self._fd, (line + "\n").encode())
        return SpanExportResult.SUCCESS


def install_provider(spans: Path) -> None:
    """Make a tracer provider writing to ``spans`` this process's global one."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_FileExporter(spans)))
    trace.set_tracer_provider(provider)


class TracedRouterProcess(RouterProcess):
    """An ``ipc-router`` process with a tracer provider writing its spans to ``spans``."""

    def __init__(self, nats_url: str, log_path: Path, spans: Path) -> None:
        super().__init__(nats_url, log_path)
        self.spans = spans

    def command(self) -> list[str]:
        """``python -m ipc_testing.traced SPANS router`` and the router's flags."""
        plain = super().command()
        flags = plain[plain.index("ipc_router") + 1 :]
        return [sys.executable, "-m", "ipc_testing.traced", str(self.spans), "router", *flags]


class TracedInstanceProcess(ChildProcess):
    """``python -m ipc_testing.traced SPANS serve NATS_URL`` as a child process."""

    def __init__(self, nats_url: str, workdir: Path) -> None:
        super().__init__(workdir / "traced-t1.log")
        self.nats_url = nats_url
        self.spans = workdir / "instance.spans"

    async def start(self, *, timeout: float = 20.0) -> None:
        """Start it and wait until it serves and its subscriptions run.

        Raises:
            RuntimeError: it did not come up within ``timeout``.
        """
        argv = [sys.executable, "-m", "ipc_testing.traced", str(self.spans), "serve"]
        self.spawn([*argv, self.nats_url], env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if not await self.wait_for_output("serving", timeout=timeout):
            raise RuntimeError(f"the traced instance did not start: {self.log_tail(5)}")


async def _serve(url: str) -> None:
    tracer = trace.get_tracer("ipc_testing.traced")
    svc = Service(SERVICE)

    @svc.method(METHOD)
    async def echo(req: Echo, ctx: CallContext) -> Echoed:
        with tracer.start_as_current_span("echo work") as span:
            span.set_attribute("ctx.trace_id", ctx.trace_id or "")
            if req.text == "fail":
                raise RuntimeError("asked to fail")
        return Echoed(text=req.text, trace_id=ctx.trace_id)

    async def on_event(event: Echo, ctx: EventContext) -> None:
        with tracer.start_as_current_span("event work") as span:
            span.set_attribute("ctx.trace_id", ctx.trace_id or "")
            span.set_attribute("text", event.text)

    async with IPCClient(url, name="traced-t1") as client:
        instance = await client.serve(svc, instance_id="t1")
        plain = await client.subscribe(EVENTS, on_event, model=Echo)
        durable = await client.subscribe(
            DURABLE_EVENTS, on_event, model=Echo, durable="traced-durable"
        )
        _say("serving")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await plain.stop()
        await durable.stop()
        await instance.stop()
        _say("stopped")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    """``SPANS router ARGS...`` or ``SPANS serve NATS_URL``."""
    spans, what, *rest = sys.argv[1:]
    install_provider(Path(spans))
    if what == "router":
        from ipc_router.api.main import main as router_main

        sys.exit(router_main(rest))
    asyncio.run(_serve(rest[0]))


if __name__ == "__main__":
    main()
