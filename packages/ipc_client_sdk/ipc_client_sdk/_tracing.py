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
look-up), and no header is added. The OpenTelemetry side, imported once it is in use, is
``_spans``. A process without a provider still passes on a trace
context it was handed (a handler's own calls carry its caller's context), so a trace is not
cut by a process that records nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

TRACEPARENT = "traceparent"
"""The W3C trace context header: version, trace id, parent span id, flags."""

TRACE_HEADERS = (TRACEPARENT, "tracestate", "baggage")
"""The W3C headers a router forwards untouched when it records no span of its own."""

_API = "opentelemetry.trace"
_PROVIDER_VARIABLE = "OTEL_PYTHON_TRACER_PROVIDER"

_OFF: AbstractContextManager[None] = contextlib.nullcontext()


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
    names a tracer provider for it to load.

    The environment is read once per process (reading ``os.environ`` costs more than the
    rest of an untraced call's tracing): like OpenTelemetry itself, which reads it once, when
    its tracer provider is first asked for, the variable is set before the process starts.
    """
    return _API in sys.modules or _provider_named()


@functools.cache
def _provider_named() -> bool:
    return _PROVIDER_VARIABLE in os.environ


def recording() -> bool:
    """Whether this process records spans: it has a tracer provider."""
    if not _loaded():
        return False
    from ipc_client_sdk import _spans

    return _spans.recorder() is not None


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
    """The caller's CLIENT span for one call (else the context it runs in, passed on);
    None when nothing is traced."""
    if not _loaded():
        return _OFF
    from ipc_client_sdk import _spans

    tracer = _spans.recorder()
    if tracer is None:
        return contextlib.nullcontext(_spans.passed_on()) if _spans.in_trace() else _OFF
    attributes = _call_attributes(service, method, call_id, "send")
    attributes["messaging.operation.name"] = "call"
    if resource_id is not None:
        attributes["ipc.resource_id"] = resource_id
    return _spans.sending(tracer, f"{service}/{method}", "CLIENT", attributes)


def sending_event(topic: str, subject: str, event_id: str) -> AbstractContextManager[Traced | None]:
    """The publisher's PRODUCER span for one event (else the context it runs in, passed
    on); None when nothing is traced."""
    if not _loaded():
        return _OFF
    from ipc_client_sdk import _spans

    tracer = _spans.recorder()
    if tracer is None:
        return contextlib.nullcontext(_spans.passed_on()) if _spans.in_trace() else _OFF
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": subject,
        "messaging.message.id": event_id,
    }
    return _spans.sending(tracer, f"publish {topic}", "PRODUCER", attributes)


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

    def attributes() -> dict[str, AttributeValue]:
        found = _call_attributes(service, method, call_id, "process")
        found["ipc.instance_id"] = instance_id
        found["ipc.delivery"] = delivery
        return found

    return _receiving(headers, f"{service}/{method}", "SERVER", attributes)


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

    def attributes() -> dict[str, AttributeValue]:
        return {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": subject,
            "messaging.message.id": event_id,
            "messaging.consumer.group.name": subscriber,
            "ipc.deliveries": deliveries,
        }

    return _receiving(headers, f"process {topic}", "CONSUMER", attributes)


def _receiving(
    headers: Mapping[str, str] | None,
    name: str,
    kind: str,
    attributes: Callable[[], dict[str, AttributeValue]],
) -> AbstractContextManager[Traced | None]:
    """A receiver's span, child of the context ``headers`` carry (or that context made
    current when this process records nothing); nothing at all (no import, no attributes
    built) when neither this process records spans nor the message carries a trace."""
    traced = headers is not None and TRACEPARENT in headers
    if not (traced or _loaded()):
        return _OFF
    from ipc_client_sdk import _spans

    tracer = _spans.recorder()
    if tracer is None and not traced:
        return _OFF
    found = _spans.receiving(tracer, headers, name, kind, attributes())
    return _OFF if found is None else found


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
    if _loaded():
        from ipc_client_sdk import _spans

        tracer = _spans.recorder()
        if tracer is not None:
            attributes = _call_attributes(service, method, call_id, "process")
            attributes["messaging.destination.name"] = subject
            attributes["ipc.delivery"] = delivery
            return _spans.routing(tracer, headers, f"route {service}/{method}", attributes)
    if not headers:
        return _OFF
    passed = {key: headers[key] for key in TRACE_HEADERS if key in headers}
    return contextlib.nullcontext(Traced(headers=passed) if passed else None)


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), or None outside a trace."""
    if _API not in sys.modules:
        return None
    from ipc_client_sdk import _spans

    return _spans.current_trace_id()


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
    from ipc_client_sdk import _spans

    _spans.failed(error, code, message)
