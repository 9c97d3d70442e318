"""OpenTelemetry traces across calls and events: W3C trace context in NATS headers.

Who makes which span (names and attributes after OpenTelemetry's RPC and messaging
semantic conventions):

- ``client.call``: a CLIENT span ``<service>/<method>`` in the caller. Its context travels
  in the ``traceparent``/``tracestate`` headers of the call: on the JetStream publish of a
  durable call (the router forwards them to the instance), on the core request of a direct
  one.
- The router: a CONSUMER span ``route <service>/<method>``, the caller's span's child, and
  its own context forwarded to the instance (``continue_routed``). A router without a
  tracer provider forwards the headers it got, untouched.
- The instance: a SERVER span ``<service>/<method>``, child of the router's span (durable)
  or of the caller's (direct). The handler runs inside it, so the spans it starts are its
  children, and ``CallContext.trace_id`` is the trace's id.
- ``client.publish``: a PRODUCER span ``publish <topic>``; each subscriber's handler runs
  in a CONSUMER span ``process <topic>``, its child.

The SDK depends on ``opentelemetry-api`` only: a process records spans when it has a tracer
provider (the OpenTelemetry SDK, configured by the application or by
``opentelemetry-instrument``). Without one nothing is created: a process that never
imported OpenTelemetry does not import it here either (each hook is one ``sys.modules``
look-up), and no header is added. A process without a provider still passes on a trace
context it was handed (a handler's own calls carry its caller's context), so a trace is not
cut by a process that records nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

TRACEPARENT = "traceparent"
"""The W3C trace context header: version, trace id, parent span id, flags."""

TRACE_HEADERS = (TRACEPARENT, "tracestate", "baggage")
"""The W3C headers a router forwards untouched when it records no span of its own."""

_SCOPE = "ipc_client_sdk"
"""The instrumentation scope the spans are reported under."""

_API = "opentelemetry.trace"
_PROVIDER_VARIABLE = "OTEL_PYTHON_TRACER_PROVIDER"

_OFF: AbstractContextManager[None] = contextlib.nullcontext()

_tracer: tuple[TracerProvider, Tracer] | None = None


@dataclass(slots=True)
class Traced:
    """One traced step: the headers that carry its context on, and its span.

    Attributes:
        headers: ``traceparent`` (and ``tracestate``) to send with the message.
        span: the step's span; None where the process records nothing and only passes a
            context on.
    """

    headers: dict[str, str] = field(default_factory=dict)
    span: Span | None = None

    def set(self, key: str, value: AttributeValue) -> None:
        """Set an attribute on the span (when there is one)."""
        if self.span is not None:
            self.span.set_attribute(key, value)


def _loaded() -> bool:
    """Whether OpenTelemetry can be in use: something imported it, or the environment
    names a tracer provider for it to load."""
    return _API in sys.modules or _PROVIDER_VARIABLE in os.environ


def recording() -> bool:
    """Whether this process records spans: it has a tracer provider."""
    if not _loaded():
        return False
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _in_trace() -> bool:
    """Whether the code runs in a trace (a current span with a valid context)."""
    if _API not in sys.modules:
        return False
    from opentelemetry import trace

    return trace.get_current_span().get_span_context().is_valid


def _get_tracer() -> Tracer:
    global _tracer
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if _tracer is None or _tracer[0] is not provider:
        from ipc_client_sdk import __version__

        _tracer = (provider, provider.get_tracer(_SCOPE, __version__))
    return _tracer[1]


def _call_attributes(
    service: str, method: str, call_id: str, operation: str
) -> dict[str, AttributeValue]:
    """What every span of a call says: the RPC conventions' names, and the messaging ones
    (the call id is an attribute, never a metric label)."""
    return {
        "rpc.system": "aegis_ipc",
        "rpc.service": service,
        "rpc.method": method,
        "messaging.system": "nats",
        "messaging.operation.type": operation,
        "messaging.message.id": call_id,
    }


def sending_call(
    service: str, method: str, call_id: str, resource_id: str | None
) -> AbstractContextManager[Traced | None]:
    """The caller's CLIENT span for one call; None when nothing is traced."""
    record = recording()
    if not (record or _in_trace()):
        return _OFF
    attributes = _call_attributes(service, method, call_id, "send")
    attributes["messaging.operation.name"] = "call"
    if resource_id is not None:
        attributes["ipc.resource_id"] = resource_id
    return _sending(f"{service}/{method}", "CLIENT", attributes, record)


def sending_event(topic: str, subject: str, event_id: str) -> AbstractContextManager[Traced | None]:
    """The publisher's PRODUCER span for one event; None when nothing is traced."""
    record = recording()
    if not (record or _in_trace()):
        return _OFF
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": subject,
        "messaging.message.id": event_id,
    }
    return _sending(f"publish {topic}", "PRODUCER", attributes, record)


@contextlib.contextmanager
def _sending(
    name: str, kind: str, attributes: dict[str, AttributeValue], record: bool
) -> Iterator[Traced]:
    """A span of this process when it records (``record``); else only the context this
    code runs in (a handler's), passed on."""
    from opentelemetry import propagate, trace

    if not record:
        passed = Traced()
        propagate.inject(passed.headers)
        yield passed
        return
    with _get_tracer().start_as_current_span(
        name, kind=trace.SpanKind[kind], attributes=attributes
    ) as span:
        traced = Traced(span=span)
        propagate.inject(traced.headers)
        try:
            yield traced
        except Exception as e:
            # Recorded, with status ERROR, as it leaves the span; the type says which.
            code = getattr(e, "code", None)
            span.set_attribute("error.type", getattr(code, "value", type(e).__qualname__))
            raise


def serving_call(
    headers: Mapping[str, str] | None,
    service: str,
    method: str,
    call_id: str,
    instance_id: str,
    delivery: int,
) -> AbstractContextManager[Traced | None]:
    """The instance's SERVER span around one call, child of the caller's (or the
    router's); None when nothing is traced."""
    record = recording()
    if not (record or (headers and TRACEPARENT in headers)):
        return _OFF
    attributes = _call_attributes(service, method, call_id, "process")
    attributes["ipc.instance_id"] = instance_id
    attributes["ipc.delivery"] = delivery
    return _receiving(headers, f"{service}/{method}", "SERVER", attributes, record)


def handling_event(
    headers: Mapping[str, str] | None,
    topic: str,
    subject: str,
    event_id: str,
    subscriber: str,
    deliveries: int,
) -> AbstractContextManager[Traced | None]:
    """A subscriber's CONSUMER span around one handler run, child of the publisher's;
    None when nothing is traced."""
    record = recording()
    if not (record or (headers and TRACEPARENT in headers)):
        return _OFF
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": subject,
        "messaging.message.id": event_id,
        "messaging.consumer.group.name": subscriber,
        "ipc.deliveries": deliveries,
    }
    return _receiving(headers, f"process {topic}", "CONSUMER", attributes, record)


def continue_routed(
    headers: Mapping[str, str] | None,
    service: str,
    method: str,
    call_id: str,
    subject: str,
    delivery: int,
) -> AbstractContextManager[Traced | None]:
    """The router's CONSUMER span for one routed call, child of the caller's, and the
    headers to forward to the instance. Without a tracer provider: no span, and the
    caller's trace headers forwarded as they came (None without any).

    Exceptions leaving the block are not recorded on the span: the router says what was
    an error (``failed``).
    """
    if not recording():
        if not headers:
            return _OFF
        passed = {key: headers[key] for key in TRACE_HEADERS if key in headers}
        return contextlib.nullcontext(Traced(headers=passed) if passed else None)
    attributes = _call_attributes(service, method, call_id, "process")
    attributes["messaging.destination.name"] = subject
    attributes["ipc.delivery"] = delivery
    return _routing(headers, f"route {service}/{method}", attributes)


@contextlib.contextmanager
def _routing(
    headers: Mapping[str, str] | None, name: str, attributes: dict[str, AttributeValue]
) -> Iterator[Traced | None]:
    from opentelemetry import propagate, trace

    parent = propagate.extract(headers) if headers else None
    with _get_tracer().start_as_current_span(
        name,
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        traced = Traced(span=span)
        propagate.inject(traced.headers)
        yield traced


@contextlib.contextmanager
def _receiving(
    headers: Mapping[str, str] | None,
    name: str,
    kind: str,
    attributes: dict[str, AttributeValue],
    record: bool,
) -> Iterator[Traced | None]:
    from opentelemetry import context, propagate, trace

    parent: Context | None = propagate.extract(headers) if headers else None
    if record:
        with _get_tracer().start_as_current_span(
            name, context=parent, kind=trace.SpanKind[kind], attributes=attributes
        ) as span:
            yield Traced(span=span)
        return
    if parent is None or not trace.get_current_span(parent).get_span_context().is_valid:
        yield None
        return
    # No provider: make the caller's context current, so that what the handler sends
    # carries it on and ``ctx.trace_id`` names the trace.
    token = context.attach(parent)
    try:
        yield None
    finally:
        context.detach(token)


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), or None outside a trace."""
    if _API not in sys.modules:
        return None
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None


def failed(
    error: BaseException | None = None, *, code: str | None = None, message: str | None = None
) -> None:
    """Mark the current span failed: status ERROR, ``error.type`` (the error code, else the
    exception's type), and the exception recorded when there is one.

    For the errors the SDK turns into replies (a handler's exception) and the router's
    refusals, which never leave the span's block as exceptions.
    """
    if _API not in sys.modules:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return
    kind = code or (type(error).__qualname__ if error is not None else "error")
    span.set_attribute("error.type", kind)
    if error is not None:
        span.record_exception(error)
    description = message if message is not None else (str(error) if error else kind)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{kind}: {description}"[:500]))
