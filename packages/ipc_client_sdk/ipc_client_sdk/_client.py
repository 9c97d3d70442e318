"""``IPCClient``: the one object a program holds to talk AegisIPC."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

from ipc_client_sdk._admin import AdminClient
from ipc_client_sdk._codec import DEFAULT_MAX_PAYLOAD, Codec
from ipc_client_sdk._credentials import Credentials, lift_url_credentials
from ipc_client_sdk._errors import ClientStateError, InvalidArgumentError
from ipc_client_sdk._link import ClientState, Link
from ipc_client_sdk._metrics import client_metrics
from ipc_client_sdk._nats import DEFAULT_SERVERS, close_nats, open_nats, parse_servers
from ipc_client_sdk._readiness import DEFAULT_READY_TIMEOUT, check_ready_timeout
from ipc_client_sdk._subjects import DEFAULT_PREFIX, Subjects

# Calling, pub/sub and serving load when first used (``ipc status`` needs none of them).
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ipc_client_sdk._calling import Caller
    from ipc_client_sdk._pubsub import EventHandler, Subscription
    from ipc_client_sdk._service import Service
    from ipc_client_sdk._serving import RoleListener, ServiceInstance

_log = logging.getLogger("ipc_client_sdk")

T = TypeVar("T")


class IPCClient:
    """A connection to AegisIPC.

    Use it as an async context manager::

        async with IPCClient(servers="nats://127.0.0.1:4222", name="svc_a") as client:
            status = await client.admin.status()

    Args:
        servers: one NATS URL, a comma-separated list, or a sequence of URLs.
        name: the connection's name, shown in NATS monitoring and router logs, and the
            caller token of its durable calls (letters, digits, '_' and '-'; no name:
            ``anonymous``). Under ``ipc auth`` it must be the service identity's name: NATS
            lets an identity publish calls as itself only.
        prefix: the subject prefix of the AegisIPC deployment (default ``ipc``).
        connect_timeout: seconds the first connect may take before it fails.
        request_timeout: default seconds to wait for an answer (calls and admin).
        max_payload: the largest payload this client encodes or accepts, in bytes.
        credentials: how to authenticate to NATS and which TLS to speak. None (default):
            ``Credentials.from_env()``, the ``IPC_NATS_*``/``IPC_TLS_*`` variables, so a
            service gets its identity from its deployment; ``Credentials()`` for none.
            Credentials written in a URL (``nats://user:pass@host``) are moved here.
        metrics: Prometheus metrics of this client's calls, handlers and events (the
            ``ipc-client-sdk[metrics]`` extra): True keeps them in a registry of the
            client's own (``metrics_registry``), a ``prometheus_client.CollectorRegistry``
            registers them there; False (default): none.

    Raises:
        InvalidArgumentError: conflicting credentials (two identities, or one in a URL and
            one in ``credentials`` or the variables); metrics asked for without
            ``prometheus-client`` installed.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = DEFAULT_SERVERS,
        name: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        connect_timeout: float = 2.0,
        request_timeout: float = 5.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        credentials: Credentials | None = None,
        metrics: bool | CollectorRegistry = False,
    ) -> None:
        if connect_timeout <= 0 or request_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.connect_timeout = connect_timeout
        urls, self._credentials = lift_url_credentials(
            parse_servers(servers),
            credentials if credentials is not None else Credentials.from_env(),
        )
        self._link = Link(
            servers=urls,
            name=name,
            subjects=Subjects(prefix),
            codec=Codec(max_payload),
            request_timeout=request_timeout,
            metrics=client_metrics(metrics),
        )
        self._admin = AdminClient(self._link)
        self._caller: Caller | None = None
        self._instances: list[ServiceInstance] = []
        self._subscriptions: list[Subscription] = []

    @property
    def servers(self) -> list[str]:
        """The NATS URLs this client connects to."""
        return self._link.servers

    @property
    def metrics_registry(self) -> CollectorRegistry | None:
        """The Prometheus registry this client's metrics are in (None: metrics are off).
        Serve it with ``prometheus_client.start_http_server(port, registry=...)`` or
        ``generate_latest(registry)``."""
        return self._link.metrics.registry

    @property
    def credentials(self) -> Credentials:
        """How this client authenticates (its ``repr()`` hides every secret)."""
        return self._credentials

    @property
    def name(self) -> str | None:
        """The connection's name, shown in NATS monitoring and router logs."""
        return self._link.name

    @property
    def subjects(self) -> Subjects:
        """The deployment's subject map (its prefix)."""
        return self._link.subjects

    @property
    def codec(self) -> Codec:
        """The codec this client encodes and decodes with (its payload limit)."""
        return self._link.codec

    @property
    def request_timeout(self) -> float:
        """Default seconds to wait for an answer (calls and admin)."""
        return self._link.request_timeout

    @property
    def state(self) -> ClientState:
        """Where the client is in its lifecycle."""
        return self._link.state

    @property
    def closing(self) -> bool:
        """True once ``close()`` has begun."""
        return self._link.closing

    @property
    def admin(self) -> AdminClient:
        """Operator operations on the router: status, services, instances, routes,
        promote, drain, and its events."""
        return self._admin

    async def connect(self) -> Self:
        """Connect to NATS.

        Raises:
            AuthenticationError: NATS refused the credentials (at once, without retrying),
                or a credentials file cannot be used.
            IPCConnectionError: NATS could not be reached within ``connect_timeout``.
            ClientStateError: the client was already opened (clients do not reopen).
        """
        if self.state is not ClientState.UNOPENED:
            raise ClientStateError(f"the client is {self.state.value}; create a new IPCClient")
        nc = await open_nats(
            self.servers,
            name=self.name,
            credentials=self._credentials,
            connect_timeout=self.connect_timeout,
            logger=_log,
            permissions=self._link.permissions,
        )
        self._link.opened(nc)
        return self

    @overload
    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        returns: type[T],
        resource_id: str | None = None,
        timeout: float | None = None,
        call_id: str | None = None,
        durable: bool | None = None,
    ) -> T: ...

    @overload
    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        returns: None = None,
        resource_id: str | None = None,
        timeout: float | None = None,
        call_id: str | None = None,
        durable: bool | None = None,
    ) -> Any: ...

    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        returns: Any = None,
        resource_id: str | None = None,
        timeout: float | None = None,
        call_id: str | None = None,
        durable: bool | None = None,
    ) -> Any:
        """Call ``"service.method"`` through the router, exactly once per ``call_id``, or
        straight to its instance, at most once (``durable=False``).

        Args:
            target: ``"service.method"``.
            payload: the request: a Pydantic model, or any value the codec carries (a dict
                is validated by the serving side against its request model).
            returns: the type to validate the result as (a model, or any type Pydantic
                knows); None returns the decoded value as it came.
            resource_id: route to the instance owning this resource.
            timeout: seconds until the call's deadline (default ``request_timeout``).
            call_id: your own id for the call: retrying with the same id never runs the
                handler twice. Default: a new unique, time-sortable id.
            durable: ``True``: the durable path (accepted by JetStream, exactly once per
                call_id, survives router and instance failures). ``False``: the direct path
                for calls that need no durability (quotes, queries): a core NATS request
                straight to the instance the router would choose, found in this client's
                routing cache, and refused by that instance unless it holds the role under
                the cached epoch; a refused call (or a cache that knows nothing yet) goes
                through the router instead. A direct call is **at most once**: it is not
                recorded, and one whose answer is lost raises ``CallTimeoutError``
                without knowing whether it ran. ``None`` (default): direct for methods
                declared ``@svc.method(..., durable=False)``, durable for the rest; a
                ``call_id`` always makes the call durable.

        Raises:
            InvalidArgumentError: a bad target, resource_id, call_id or timeout.
            CodecError: the payload cannot be encoded, or the result does not fit
                ``returns``.
            ServiceUnavailableError: nobody can serve the call now, e.g. no healthy
                instance (raised at once, not after the timeout); ``RouterUnavailableError``
                when no router has set this deployment up; ``StoreFullError`` when the
                calls stream or the results bucket is full (the call was refused unrun).
            CallTimeoutError: the deadline passed.
            RemoteError: the handler failed (``INTERNAL`` or its own code), its instance died
                holding the call (``UNKNOWN``: whether it ran is unknown), the method does
                not exist (``NOT_FOUND``), or the payload did not fit its model
                (``INVALID_ARGUMENT``, and the handler did not run).
            PermissionDeniedError: NATS does not let this identity call ``service`` (at
                once, not after the timeout).
            IPCConnectionError: the NATS connection is gone.
        """
        if self._caller is None:
            from ipc_client_sdk._calling import Caller  # noqa: PLC0415  # see the imports

            self._caller = Caller(self._link)
        return await self._caller.call(
            target,
            payload,
            resource_id=resource_id,
            timeout=timeout,
            returns=returns,
            call_id=call_id,
            durable=durable,
        )

    async def publish(
        self,
        topic: str,
        event: Any,
        *,
        event_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Publish ``event`` (a Pydantic model, or any value the codec carries) on ``topic``.

        Every subscription whose pattern matches gets it; the events stream keeps it for
        durable subscriptions. Returns once JetStream has stored it: its stream sequence.

        Args:
            topic: dot-separated tokens, no wildcards (``md.ticks.AAPL``).
            event: the event.
            event_id: your id for it (a token): publishing it again is stored once (within
                the stream's 2-minute de-duplication window). A random one by default.
            timeout: seconds to wait for JetStream (``request_timeout`` by default).

        Raises:
            InvalidArgumentError: a bad topic, id or timeout, before anything is sent.
            CodecError: the event cannot be encoded.
            CallTimeoutError: JetStream did not confirm it in time (publish again with the
                same ``event_id`` to be safe).
            RouterUnavailableError: no router has set up this deployment's events stream.
            StoreFullError: the store has no room for it (the events stream itself discards
                its oldest events instead, so this means the whole store is full).
            PermissionDeniedError: NATS does not let this identity publish on ``topic``.
        """
        from ipc_client_sdk._pubsub import publish  # noqa: PLC0415  # see the imports

        return await publish(self._link, topic, event, event_id=event_id, timeout=timeout)

    async def subscribe(
        self,
        topic: str,
        handler: EventHandler,
        *,
        model: Any = None,
        queue: str | None = None,
        durable: str | None = None,
        max_deliveries: int = 5,
        backoff: Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0),
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> Subscription:
        """Call ``handler`` for every event published on a topic matching ``topic``.

        Returns once the subscription is live: an event published after that reaches it.

        Args:
            topic: a topic or pattern: ``*`` matches one token, a final ``>`` the rest.
            handler: ``async def on_event(event)`` or ``async def on_event(event, ctx)``
                (``ctx`` is an ``EventContext``: topic, event_id, published_at, publisher,
                sequence, deliveries).
            model: the type each event is validated into (a Pydantic model, or any type
                Pydantic validates); None passes the decoded value as it is. An event that
                does not fit goes to the dead-letter subject, never to the handler.
            queue: a queue group: each event goes to one member (plain subscriptions).
            durable: a durable name: a JetStream consumer that outlives this process and
                replays what it missed; at least once; subscribers sharing the name share
                the events; events of one subject are handled in order.
            max_deliveries: durable only: tries (with ``backoff`` seconds between them)
                before a failing event goes to the dead-letter subject.
            backoff: seconds to wait before the 2nd, 3rd, ... try (the last repeats).
            ready_timeout: durable only: seconds to wait for a router that has not set up
                the events stream yet, retrying with backoff and logging what it waits for;
                0 fails at once.

        Raises:
            InvalidArgumentError: a bad argument, before anything is sent.
            RouterUnavailableError: durable, and no router has set up the events stream
                within ``ready_timeout``.
            PermissionDeniedError: NATS does not let this identity subscribe to ``topic``
                (or, durable, use the events stream).
        """
        from ipc_client_sdk._pubsub import (  # noqa: PLC0415  # see the imports
            Subscription,
            check_subscribe_arguments,
        )

        check_subscribe_arguments(topic, handler, model, queue, durable, max_deliveries)
        delays = tuple(backoff)
        if not delays or any(not (isinstance(d, int | float) and 0 <= d <= 3600) for d in delays):
            raise InvalidArgumentError(
                f"backoff must be seconds between 0 and 3600, got {backoff!r}"
            )
        sub = Subscription(
            self._link,
            topic,
            handler,
            model=model,
            queue=queue,
            durable=durable,
            max_deliveries=max_deliveries,
            backoff=delays,
            ready_timeout=check_ready_timeout(ready_timeout),
        )
        await sub.start()
        self._subscriptions.append(sub)
        return sub

    async def serve(
        self,
        service: Service,
        *,
        instance_id: str,
        resources: Sequence[str] = (),
        concurrency: int = 64,
        heartbeat_interval: float = 0.5,
        on_role_change: RoleListener | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> ServiceInstance:
        """Serve ``service`` as instance ``instance_id``: register, heartbeat, take calls.

        Args:
            service: the methods to serve.
            instance_id: this instance's id within the service (unique among live ones).
            resources: resources this instance claims; each belongs to the first live
                instance that claimed it.
            concurrency: calls handled at once; more wait their turn.
            heartbeat_interval: seconds between heartbeats (at most half the
                router's lease, 0.8 of its ``--heartbeat-timeout``).
            on_role_change: called (plain or ``async``) with a ``RoleChange`` each time
                the router changes this instance's roles; ``instance.role_changes()`` is
                the async-iterator form.
            ready_timeout: seconds to wait for a router that is not up yet (its results
                bucket missing, nothing answering the registration), retrying with backoff
                and logging what it waits for; 0 fails at once.

        Raises:
            InvalidArgumentError: a bad argument, before anything is sent.
            RouterUnavailableError: no router answered the registration within
                ``ready_timeout``.
            RemoteError: the router refused it (``ALREADY_EXISTS``: another live process
                serves this instance_id).
            PermissionDeniedError: NATS does not let this identity serve ``service`` (its
                inbox, its registration or its results bucket).
        """
        from ipc_client_sdk._serving import (  # noqa: PLC0415  # see the imports
            ServiceInstance,
            check_serve_arguments,
        )

        check_serve_arguments(service, instance_id, resources, concurrency, heartbeat_interval)
        ready_timeout = check_ready_timeout(ready_timeout)
        instance = ServiceInstance(
            self._link,
            service,
            instance_id,
            resources,
            concurrency=concurrency,
            heartbeat_interval=heartbeat_interval,
            on_role_change=on_role_change,
            ready_timeout=ready_timeout,
        )
        await instance.start()
        self._instances.append(instance)
        return instance

    async def close(self, *, timeout: float = 5.0) -> None:
        """Stop served instances, drain and close the connection. Safe to call twice.

        Args:
            timeout: seconds the in-flight calls and the drain may take.
        """
        if self.state is ClientState.CLOSED:
            return
        if self.state is ClientState.OPEN:
            for sub in self._subscriptions:
                await sub.stop(timeout=timeout)
            for instance in self._instances:
                await instance.stop(timeout=timeout)
        nc = self._link.closed()
        if self._caller is not None:
            await self._caller.close()
        if nc is not None:
            await close_nats(nc, timeout=timeout)

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
