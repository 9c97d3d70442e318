"""OpenTelemetry traces: the caller's trace continues in the router and the instance (each a
process of its own, recording spans into a file), on durable and direct calls and events;
without a tracer provider nothing is added to the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import TraceState

from ipc_client_sdk import CallContext, EventContext, IPCClient, RemoteError, Service, _spans
from ipc_client_sdk._tracing import (
    TRACEPARENT,
    continue_routed,
    current_trace_id,
    sending_call,
    serving_call,
)
from ipc_router.infrastructure.nats_server import NatsServerProcess
from ipc_testing.traced import (
    Echo,
    Echoed,
    SpanRecord,
    TracedInstanceProcess,
    TracedRouterProcess,
    read_spans,
)
from ipc_testing.waiting import until

_HEADER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process has no tracer provider (OpenTelemetry's default)."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """This process's tracer provider for the test, its spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


@pytest.fixture
async def traced(
    nats_server: NatsServerProcess, tmp_path: Path
) -> AsyncIterator[tuple[TracedRouterProcess, TracedInstanceProcess]]:
    """A router and an instance of ``traced``, each a process recording its spans."""
    router = TracedRouterProcess(nats_server.url, tmp_path / "router.log", tmp_path / "r.spans")
    instance = TracedInstanceProcess(nats_server.url, tmp_path)
    try:
        await router.start()
        await instance.start()
        yield router, instance
    finally:
        await instance.stop()
        await router.stop()


def _id(span: ReadableSpan) -> tuple[str, str]:
    """A local span's trace id and span id, as the span files write them."""
    context = span.get_span_context()
    assert context is not None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def _parent(span: ReadableSpan) -> str | None:
    return trace.format_span_id(span.parent.span_id) if span.parent is not None else None


def _one(records: list[SpanRecord], name: str, trace_id: str) -> SpanRecord:
    found = [r for r in records if r.name == name and r.trace_id == trace_id]
    assert len(found) == 1, (name, records)
    return found[0]


async def _spans_of(path: Path, name: str, trace_id: str) -> list[SpanRecord]:
    """The spans in ``path``, once one named ``name`` of trace ``trace_id`` is there."""
    await until(lambda: any(r.name == name and r.trace_id == trace_id for r in read_spans(path)))
    return read_spans(path)


@pytest.mark.slow
@pytest.mark.parametrize("durable", [True, False], ids=["durable", "direct"])
async def test_a_call_continues_the_callers_trace_in_the_router_and_the_instance(
    nats_server: NatsServerProcess,
    traced: tuple[TracedRouterProcess, TracedInstanceProcess],
    spans: InMemorySpanExporter,
    durable: bool,
) -> None:
    router, instance = traced
    async with IPCClient(nats_server.url, name="caller") as client:
        with trace.get_tracer("test").start_as_current_span("test") as outer:
            answer = await client.call(
                "traced.echo", Echo(text="hi"), returns=Echoed, durable=durable
            )
    trace_id, outer_id = _id(outer)  # type: ignore[arg-type]
    (client_span,) = [s for s in spans.get_finished_spans() if s.name == "traced/echo"]
    assert client_span.kind is trace.SpanKind.CLIENT
    assert _id(client_span)[0] == trace_id and _parent(client_span) == outer_id
    attributes = client_span.attributes or {}
    assert attributes["rpc.service"] == "traced" and attributes["rpc.method"] == "echo"
    assert attributes["messaging.system"] == "nats"
    assert attributes["ipc.path"] == ("durable" if durable else "direct")

    # The call's span ends once its outcome is stored, a moment after the answer went out.
    records = await _spans_of(instance.spans, "traced/echo", trace_id)
    server = _one(records, "traced/echo", trace_id)
    assert server.kind == "SERVER" and server.status == "UNSET"
    work = _one(records, "echo work", trace_id)
    assert work.parent_id == server.span_id  # the handler's own spans nest under the call's
    assert work.attributes["ctx.trace_id"] == trace_id
    assert answer.trace_id == trace_id

    routed = [r for r in read_spans(router.spans) if r.trace_id == trace_id]
    if durable:
        (route,) = routed
        assert route.name == "route traced/echo" and route.kind == "CONSUMER"
        assert route.parent_id == _id(client_span)[1]
        assert route.attributes["messaging.message.id"] == attributes["messaging.message.id"]
        assert server.parent_id == route.span_id
    else:
        assert routed == []  # straight from the caller to the instance
        assert server.parent_id == _id(client_span)[1]


@pytest.mark.slow
async def test_a_failing_handler_marks_its_span_and_the_callers_as_errors(
    nats_server: NatsServerProcess,
    traced: tuple[TracedRouterProcess, TracedInstanceProcess],
    spans: InMemorySpanExporter,
) -> None:
    _, instance = traced
    async with IPCClient(nats_server.url, name="caller") as client:
        with pytest.raises(RemoteError):
            await client.call("traced.echo", Echo(text="fail"), returns=Echoed)
    (client_span,) = [s for s in spans.get_finished_spans() if s.name == "traced/echo"]
    assert client_span.status.status_code is trace.StatusCode.ERROR
    assert (client_span.attributes or {})["error.type"] == "INTERNAL"
    trace_id = _id(client_span)[0]
    server = _one(await _spans_of(instance.spans, "traced/echo", trace_id), "traced/echo", trace_id)
    assert server.status == "ERROR" and server.attributes["error.type"] == "RuntimeError"


@pytest.mark.slow
@pytest.mark.parametrize("topic", ["traced.events.x", "traced.durable.x"], ids=["plain", "durable"])
async def test_an_event_continues_the_publishers_trace_in_the_subscriber(
    nats_server: NatsServerProcess,
    traced: tuple[TracedRouterProcess, TracedInstanceProcess],
    spans: InMemorySpanExporter,
    topic: str,
) -> None:
    _, instance = traced
    async with IPCClient(nats_server.url, name="publisher") as client:
        with trace.get_tracer("test").start_as_current_span("test") as outer:
            await client.publish(topic, Echo(text="tick"))
    trace_id, outer_id = _id(outer)  # type: ignore[arg-type]
    (producer,) = [s for s in spans.get_finished_spans() if s.name == f"publish {topic}"]
    assert producer.kind is trace.SpanKind.PRODUCER and _parent(producer) == outer_id

    records = await _spans_of(instance.spans, "event work", trace_id)
    consumer = _one(records, f"process {topic}", trace_id)
    assert consumer.kind == "CONSUMER" and consumer.parent_id == _id(producer)[1]
    assert consumer.attributes["messaging.operation.type"] == "process"
    work = _one(records, "event work", trace_id)
    assert work.parent_id == consumer.span_id
    assert work.attributes["ctx.trace_id"] == trace_id


@pytest.mark.slow
async def test_a_router_without_a_provider_forwards_the_trace_untouched(
    clients: tuple[IPCClient, IPCClient], spans: InMemorySpanExporter
) -> None:
    caller, server = clients  # the router process has no tracer provider
    svc = Service("plain")
    seen: list[str | None] = []

    @svc.method("m")
    async def m(req: Echo, ctx: CallContext) -> Echo:
        seen.append(ctx.trace_id)
        return req

    await server.serve(svc, instance_id="p1")
    await caller.call("plain.m", Echo(text="x"), durable=True)
    # The call's span ends once its outcome is stored, a moment after the answer went out.
    await until(lambda: any(s.kind is trace.SpanKind.SERVER for s in spans.get_finished_spans()))
    finished = spans.get_finished_spans()
    (client_span,) = [s for s in finished if s.kind is trace.SpanKind.CLIENT]
    (server_span,) = [s for s in finished if s.kind is trace.SpanKind.SERVER]
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.get_span_context().span_id  # type: ignore[union-attr]
    assert seen == [_id(client_span)[0]]


@pytest.mark.slow
async def test_without_a_provider_no_trace_header_is_sent(
    clients: tuple[IPCClient, IPCClient], raw_nats: NATS, no_provider: None
) -> None:
    caller, server = clients
    wire: list[Msg] = []

    async def keep(msg: Msg) -> None:
        wire.append(msg)

    for subject in ("ipc.call.>", "ipc.inst.plain.>", "ipc.pub.>"):
        await raw_nats.subscribe(subject, cb=keep)
    await raw_nats.flush()
    svc = Service("plain")
    call_traces: list[str | None] = []
    event_traces: list[str | None] = []

    @svc.method("m")
    async def m(req: Echo, ctx: CallContext) -> Echo:
        call_traces.append(ctx.trace_id)
        return req

    async def on_event(event: Echo, ctx: EventContext) -> None:
        event_traces.append(ctx.trace_id)

    await server.serve(svc, instance_id="p1")
    await server.subscribe("plain.>", on_event, model=Echo)
    await caller.call("plain.m", Echo(text="x"), durable=True)
    await caller.call("plain.m", Echo(text="x"), durable=False)
    await caller.publish("plain.e", Echo(text="x"))
    await until(lambda: len(event_traces) == 1)
    subjects = {msg.subject.split(".")[1] for msg in wire}
    assert subjects >= {"call", "inst", "pub"}, subjects
    assert [m for m in wire if TRACEPARENT in (m.headers or {})] == []
    assert call_traces == [None, None] and event_traces == [None]


def test_without_a_provider_and_outside_a_trace_nothing_is_traced(no_provider: None) -> None:
    with sending_call("s", "m", "c1", None) as traced:
        assert traced is None
    with serving_call({}, "s", "m", "c1", "i1", 1) as traced:
        assert traced is None and current_trace_id() is None


def test_without_a_provider_a_trace_is_passed_on(no_provider: None) -> None:
    # An instance without a provider: its handler's own calls carry the caller's context.
    with serving_call({TRACEPARENT: _HEADER}, "s", "m", "c1", "i1", 1) as traced:
        assert traced is None
        assert current_trace_id() == _HEADER.split("-")[1]
        with sending_call("t", "n", "c2", None) as sent:
            assert sent is not None and sent.span is None
            assert sent.headers[TRACEPARENT] == _HEADER
    assert current_trace_id() is None
    # A router without a provider forwards the trace headers as they came, and no others.
    headers = {TRACEPARENT: _HEADER, "tracestate": "a=1", "Nats-Msg-Id": "c1"}
    with continue_routed(headers, "s", "m", "c1", "ipc.call.s.m", 1) as routed:
        assert routed is not None and routed.span is None
        assert routed.headers == {TRACEPARENT: _HEADER, "tracestate": "a=1"}
    with continue_routed({"Nats-Msg-Id": "c1"}, "s", "m", "c1", "ipc.call.s.m", 1) as routed:
        assert routed is None


@pytest.mark.parametrize(
    "headers",
    [
        {TRACEPARENT: _HEADER, "Nats-Msg-Id": "c1"},
        {TRACEPARENT: _HEADER.replace("-01", "-00")},
        {"Nats-Msg-Id": "c1"},
        {TRACEPARENT: _HEADER, "tracestate": "a=1,b=2"},
        {TRACEPARENT: _HEADER, "baggage": "user=u1"},
        {TRACEPARENT: _HEADER.upper()},
        {TRACEPARENT: "00-" + "0" * 32 + "-b7ad6b7169203331-01"},
        {TRACEPARENT: _HEADER + "-extra"},
        {TRACEPARENT: "01" + _HEADER[2:] + "-extra"},
    ],
    ids=["sampled", "unsampled", "none", "state", "baggage", "upper", "zero", "extra", "v1"],
)
def test_trace_headers_are_read_as_the_global_propagator_reads_them(
    headers: dict[str, str],
) -> None:
    ours, theirs = _spans.extract(headers), propagate.extract(headers)
    assert trace.get_current_span(ours).get_span_context() == (
        trace.get_current_span(theirs).get_span_context()
    )
    assert baggage.get_all(ours) == baggage.get_all(theirs)


def test_trace_headers_are_written_as_the_global_propagator_writes_them(
    spans: InMemorySpanExporter,
) -> None:
    state = TraceState([("a", "1")])
    parents = [
        trace.INVALID_SPAN,
        trace.NonRecordingSpan(trace.SpanContext(1, 2, True, trace.TraceFlags(1), state)),
    ]
    for parent in parents:
        with trace.use_span(parent), sending_call("s", "m", "c1", None) as traced:
            assert traced is not None and traced.span is not None
            expected: dict[str, str] = {}
            propagate.inject(expected)
            assert traced.headers == expected and TRACEPARENT in expected
    assert "tracestate" in expected
    # Baggage in the context goes with it.
    token = context.attach(baggage.set_baggage("user", "u1"))
    try:
        with sending_call("s", "m", "c2", None) as traced:
            assert traced is not None
            expected = {}
            propagate.inject(expected)
            assert traced.headers == expected and "baggage" in expected
    finally:
        context.detach(token)
