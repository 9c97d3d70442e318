"""``Service`` and ``CallContext``: declaring the methods a program serves.

::

    svc = Service("service_b")

    @svc.method("do_work")
    async def do_work(req: WorkRequest, ctx: CallContext) -> WorkResult: ...

The first parameter's annotation is the request type: every request is validated against it
before the handler runs, and a request that does not fit is refused with
``INVALID_ARGUMENT``. The second parameter, when present, receives the ``CallContext``.
"""

from __future__ import annotations

import inspect
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, overload

from ipc_client_sdk._codec import check_type
from ipc_client_sdk._errors import InvalidArgumentError
from ipc_client_sdk._subjects import validate_token

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about the call it is serving.

    Attributes:
        call_id: the call's id. Use it as the idempotency key of any side effect outside
            AegisIPC (a database write, an order sent to an exchange): it is the same on
            every delivery and every retry of this call.
        service: the service name.
        method: the method name.
        instance_id: the instance serving the call.
        resource_id: the resource the call targets, if any.
        deadline: the caller's absolute deadline (Unix seconds), if any.
        caller: the caller's connection name, if it gave one: as the caller wrote it, not
            vouched for by NATS or the router (log it; do not authorize on it).
        epoch: the routing epoch the call was routed under.
        delivery: 1 on the first delivery; more when the call was delivered again.
        trace_id: the OpenTelemetry trace the call belongs to (32 hex digits), or None
            when the caller sent no trace context and this process records no spans.
    """

    call_id: str
    service: str
    method: str
    instance_id: str
    resource_id: str | None = None
    deadline: float | None = None
    caller: str | None = None
    epoch: int | None = None
    delivery: int = 1
    trace_id: str | None = None

    def remaining(self) -> float | None:
        """Seconds left before the caller's deadline (negative once passed), or None."""
        return None if self.deadline is None else self.deadline - time.time()


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One served method: its handler and the type its requests are validated against."""

    name: str
    handler: Handler
    request_type: Any
    wants_context: bool
    durable: bool = True
    """False: callers send calls straight to the instance by default (at most once)."""

    async def invoke(self, request: Any, ctx: CallContext) -> Any:
        """Run the handler."""
        if self.wants_context:
            return await self.handler(request, ctx)
        return await self.handler(request)


def _is_async(handler: object) -> bool:
    return inspect.iscoroutinefunction(handler)


class Service:
    """A named set of methods that instances serve with ``client.serve(svc, ...)``.

    Args:
        name: the service name: letters, digits, '_' and '-'.
        load_balanced: by default a service is *active/standby*: its first healthy instance
            (the active) takes every call that is not for a resource another instance
            claimed, and the others stand by to take over. With ``True``, such calls are
            spread over every healthy instance instead (round robin; an unclaimed
            ``resource_id`` sticks to one instance): for stateless services such as quotes.
            Claimed resources always go to their owner.

    Raises:
        InvalidArgumentError: the name is not a valid service name (a ``ValueError`` too).
    """

    def __init__(self, name: str, *, load_balanced: bool = False) -> None:
        try:
            self.name = validate_token(name, "service name")
        except ValueError as e:
            raise InvalidArgumentError(str(e)) from e
        if not isinstance(load_balanced, bool):
            raise InvalidArgumentError(
                f"load_balanced must be True or False, got {load_balanced!r}"
            )
        self.load_balanced = load_balanced
        self._methods: dict[str, MethodSpec] = {}

    @property
    def methods(self) -> Mapping[str, MethodSpec]:
        """The declared methods by name."""
        return MappingProxyType(self._methods)

    @overload
    def method[H: Handler](self, name: H) -> H: ...

    @overload
    def method[H: Handler](
        self, name: str | None = None, *, durable: bool = True
    ) -> Callable[[H], H]: ...

    def method[H: Handler](
        self, name: str | H | None = None, *, durable: bool = True
    ) -> H | Callable[[H], H]:
        """Declare a method: ``@svc.method("do_work")`` or ``@svc.method``.

        ``durable=False`` declares a method whose calls need no durability, such as a
        quote or a query: callers send them straight to this instance by default, at most
        once (see ``IPCClient.call``'s ``durable``). A caller can still ask for
        ``durable=True``.

        Raises:
            TypeError: the handler is not ``async def`` or takes other parameters than
                ``(request)`` or ``(request, ctx)``.
            InvalidArgumentError: the name is invalid or already declared (a ``ValueError``).
        """
        if not isinstance(durable, bool):
            raise InvalidArgumentError(f"durable must be True or False, got {durable!r}")
        if callable(name):
            return self._declare(name.__name__, name, durable)

        def declare(handler: H) -> H:
            return self._declare(name or handler.__name__, handler, durable)

        return declare

    def _declare[H: Handler](self, name: str, handler: H, durable: bool) -> H:
        try:
            validate_token(name, "method name")
        except ValueError as e:
            raise InvalidArgumentError(str(e), service=self.name) from e
        if name in self._methods:
            raise InvalidArgumentError(
                f"method {name!r} is already declared on service {self.name!r}",
                service=self.name,
            )
        if not _is_async(handler):
            raise TypeError(f"handler for {self.name}.{name} must be an 'async def' function")
        params = [
            p
            for p in inspect.signature(handler).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(params) not in (1, 2):
            raise TypeError(
                f"handler for {self.name}.{name} must take (request) or (request, ctx), "
                f"not {len(params)} parameters"
            )
        try:
            hints = typing.get_type_hints(handler)
        except Exception as e:  # a forward reference that does not resolve
            raise TypeError(f"cannot read the annotations of {self.name}.{name}: {e}") from e
        request_type = hints.get(params[0].name, Any)
        try:
            check_type(request_type)
        except TypeError as e:
            raise TypeError(f"request type of {self.name}.{name}: {e}") from e
        self._methods[name] = MethodSpec(
            name=name,
            handler=handler,
            request_type=request_type,
            wants_context=len(params) == 2,
            durable=durable,
        )
        return handler
