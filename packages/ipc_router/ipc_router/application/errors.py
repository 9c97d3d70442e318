"""The router's application errors.

RouterError                root
├── StoreUnavailableError   a JetStream store did not answer in time or refused
└── HandoverError           a handover was refused; nothing was changed
    ├── HandoverBusyError     another handover of the service is under way
    ├── DrainTimeoutError     the outgoing instance still had calls in flight at the deadline
    ├── RolesChangedError     the roles moved (a failover) while the outgoing actives drained
    ├── InstanceReplacedError another process holds the instance id now
    └── SessionRequiredError  an instance's own operation came without its session
"""

from __future__ import annotations


class RouterError(Exception):
    """Root of the errors the router's use cases raise."""


class StoreUnavailableError(RouterError):
    """A store behind a port (JetStream KV or stream) did not answer in time or refused.

    Attributes:
        store: which store, e.g. the bucket name.
    """

    def __init__(self, store: str, reason: str) -> None:
        self.store = store
        self.reason = reason
        super().__init__(f"{store} unavailable: {reason}")


class HandoverError(RouterError):
    """A handover (drain, promote, planned stop) was refused and changed nothing.

    Attributes:
        service: the service whose roles were to move.
    """

    def __init__(self, service: str, message: str) -> None:
        self.service = service
        super().__init__(message)


class HandoverBusyError(HandoverError):
    """Another handover of the service did not finish within the wait."""

    def __init__(self, service: str) -> None:
        super().__init__(
            service, f"another handover of {service!r} is under way; try again when it is done"
        )


class DrainTimeoutError(HandoverError):
    """An outgoing instance still had calls in flight when the drain ran out.

    Attributes:
        instance_id: the busy instance; inflight: its calls in flight then; drain: the
        seconds waited.
    """

    def __init__(self, service: str, instance_id: str, inflight: int, drain: float) -> None:
        self.instance_id = instance_id
        self.inflight = inflight
        self.drain = drain
        super().__init__(
            service,
            f"instance {instance_id!r} still has {inflight} calls in flight after "
            f"{drain:g}s; nothing was changed (try a longer drain)",
        )


class RolesChangedError(HandoverError):
    """The roles moved (a failover) while the outgoing actives drained."""

    def __init__(self, service: str) -> None:
        super().__init__(
            service,
            "the roles changed while the current actives drained (a failover?); "
            "nothing was changed: look again and retry",
        )


class InstanceReplacedError(HandoverError):
    """The request came from a process that no longer holds the instance id.

    Attributes:
        instance_id: the instance.
    """

    def __init__(self, service: str, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(service, f"instance {instance_id!r} is now held by another process")


class SessionRequiredError(HandoverError):
    """An operation only the instance itself may ask for (deregister, its own drain, a
    heartbeat) came without the instance's session: whoever sent it does not prove to be
    the process that registered.

    Attributes:
        instance_id: the instance.
    """

    def __init__(self, service: str, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(
            service,
            f"only instance {instance_id!r} of {service!r} itself may ask this: "
            "the request must carry its session",
        )
