"""The OpenTelemetry side of ``_tracing``: spans started, made current and ended, and the
W3C headers read and written.

Imported by ``_tracing`` only once OpenTelemetry is in use in the process, so this module
imports it at the top: the per-call work does no import look-ups of its own.

What it saves over ``Tracer.start_as_current_span`` and the global propagator, per span
(``benchmarks/tracing_cost.py``): the two generator context managers around the span
(``_Spanned`` does their work), the composite propagator's trace context and baggage passes
(a version 00 ``traceparent`` is a fixed format, read and written here when the global
propagator is OpenTelemetry's default), and the tracer provider's look-up (decided once per
provider).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as contexts
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from ipc_client_sdk._tracing import TRACEPARENT, Traced

_SCOPE = "ipc_client_sdk"
"""The instrumentation scope the spans are reported under."""

_NOT_RECORDING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
"""The API's providers when no SDK is configured: they record nothing."""

_tracer: tuple[TracerProvider, Tracer | None] | None = None
"""The tracer provider last seen, and this module's tracer from it (None: it records
nothing)."""

_w3c: tuple[TextMapPropagator, bool] | None = None
"""The global propagator last seen, and whether it is OpenTelemetry's default (W3C trace
context, and W3C baggage): then ``extract`` and ``inject`` read and write the headers."""

_DEFAULT_PROPAGATORS = (
    (TraceContextTextMapPropagator,),
    (TraceContextTextMapPropagator, W3CBaggagePropagator),
)

_TRACEPARENT_FORM = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""A version 00 ``traceparent`` as a W3C propagator writes it; any other form goes through
the global propagator."""


def recorder() -> Tracer | None:
    """This module's tracer when the process records spans (it has a tracer provider);
    decided once per provider."""
    global _tracer
    provider = trace.get_tracer_provider()
    decided = _tracer
    if decided is None or decided[0] is not provider:
        tracer = None
        if not isinstance(provider, _NOT_RECORDING):
            from ipc_client_sdk import __version__

            tracer = provider.get_tracer(_SCOPE, __version__)
        decided = _tracer = (provider, tracer)
    return decided[1]


def in_trace() -> bool:
    """Whether the code runs in a trace (a current span with a valid context)."""
    return trace.get_current_span().get_span_context().is_valid


def _direct() -> bool:
    """Whether the global propagator is the default W3C one (decided once per propagator)."""
    global _w3c
    textmap = propagate.get_global_textmap()
    decided = _w3c
    if decided is None or decided[0] is not textmap:
        parts = getattr(textmap, "_propagators", None)  # a CompositePropagator's
        kinds = tuple(type(p) for p in parts) if isinstance(parts, list | tuple) else ()
        decided = _w3c = (textmap, kinds in _DEFAULT_PROPAGATORS)
    return decided[1]


def extract(headers: Mapping[str, str]) -> Context:
    """The context ``headers`` carry, as the global propagator reads it.

    The common cases, a version 00 ``traceparent`` alone or no trace header, are read here;
    ``tracestate``, ``baggage``, another form or another propagator go through
    ``propagate.extract``.
    """
    if "tracestate" in headers or "baggage" in headers or not _direct():
        return propagate.extract(headers)
    value = headers.get(TRACEPARENT)
    if value is None:
        return Context()  # no parent: the span starts a trace
    found = _TRACEPARENT_FORM.fullmatch(value)
    if found is None:
        return propagate.extract(headers)
    trace_id, span_id = int(found[1], 16), int(found[2], 16)
    if not (trace_id and span_id):
        return propagate.extract(headers)
    parent = trace.SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(int(found[3], 16))
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent), Context())


def inject(headers: dict[str, str], span: Span) -> None:
    """Write the context of ``span`` (the current span) into ``headers`` as the global
    propagator would: ``traceparent`` and ``tracestate`` written here unless there is
    baggage to send or another propagator."""
    if baggage.get_all() or not _direct():
        propagate.inject(headers)
        return
    context = span.get_span_context()
    if not context.is_valid:
        return
    headers[TRACEPARENT] = (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    if context.trace_state:
        headers["tracestate"] = context.trace_state.to_header()


ERRORS_OFF, ERRORS_RECORDED, ERRORS_TYPED = 0, 1, 2
"""What a span does with an exception leaving its block: nothing (the router's); record it
with status ERROR, as ``use_span`` does; the same after setting ``error.type`` (a
sender's: the error code, else the exception's type)."""


class Spanned:
    """A started span, current for a block and ended as the block leaves; the work of
    ``Tracer.start_as_current_span`` without its two generator context managers."""

    __slots__ = ("_errors", "_span", "_token", "_traced")

    def __init__(self, span: Span, errors: int) -> None:
        self._span = span
        self._errors = errors
        self._traced = Traced(span=span)
        self._token: Token[Context] | None = None

    def __enter__(self) -> Traced:
        self._token = contexts.attach(trace.set_span_in_context(self._span))
        inject(self._traced.headers, self._span)
        return self._traced

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if self._token is not None:
            contexts.detach(self._token)
        try:
            # As ``use_span``: an Exception is an error; a cancellation is not.
            if self._errors and isinstance(error, Exception) and span.is_recording():
                if self._errors == ERRORS_TYPED:
                    code = getattr(error, "code", None)
                    span.set_attribute(
                        "error.type", getattr(code, "value", type(error).__qualname__)
                    )
                span.record_exception(error)
                description = f"{type(error).__name__}: {error}"
                span.set_status(trace.Status(trace.StatusCode.ERROR, description))
        finally:
            span.end()


class Current:
    """A context current for a block (a trace passed on; no span of this process's)."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context
        self._token: Token[Context] | None = None

    def __enter__(self) -> None:
        self._token = contexts.attach(self._context)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            contexts.detach(self._token)


def passed_on() -> Traced:
    """The headers that carry the context this code runs in (a handler's) on, without a
    span of this process's."""
    passed = Traced()
    inject(passed.headers, trace.get_current_span())
    return passed


def sending(tracer: Tracer, name: str, kind: str, attributes: dict[str, AttributeValue]) -> Spanned:
    """A sender's span (CLIENT, PRODUCER): an exception leaving it is recorded, with its
    ``error.type``."""
    span = tracer.start_span(name, kind=SpanKind[kind], attributes=attributes)
    return Spanned(span, ERRORS_TYPED)


def routing(
    tracer: Tracer,
    headers: Mapping[str, str] | None,
    name: str,
    attributes: dict[str, AttributeValue],
) -> Spanned:
    """The router's CONSUMER span: exceptions leaving it are not recorded (the router
    marks its errors itself)."""
    span = tracer.start_span(
        name,
        context=extract(headers) if headers else None,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )
    return Spanned(span, ERRORS_OFF)


def receiving(
    tracer: Tracer | None,
    headers: Mapping[str, str] | None,
    name: str,
    kind: str,
    attributes: dict[str, AttributeValue],
) -> Spanned | Current | None:
    """A receiver's span (SERVER, CONSUMER), child of the context ``headers`` carry; without
    ``tracer``, that context made current (None: there is none)."""
    parent = extract(headers) if headers else None
    if tracer is not None:
        span = tracer.start_span(name, context=parent, kind=SpanKind[kind], attributes=attributes)
        return Spanned(span, ERRORS_RECORDED)
    if parent is None or not trace.get_current_span(parent).get_span_context().is_valid:
        return None
    return Current(parent)


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), or None outside a trace."""
    span_context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None


def failed(error: BaseException | None, code: str | None, message: str | None) -> None:
    """``_tracing.failed``'s work on the current span."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    kind = code or (type(error).__qualname__ if error is not None else "error")
    span.set_attribute("error.type", kind)
    if error is not None:
        span.record_exception(error)
    description = message if message is not None else (str(error) if error else kind)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{kind}: {description}"[:500]))
