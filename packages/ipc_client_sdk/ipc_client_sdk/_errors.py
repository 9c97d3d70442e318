"""The SDK's exceptions: one root, every error a caller can catch.

    IPCError                      root; carries code, message, call_id, service, instance
    ├── IPCConnectionError        NATS cannot be reached (UNAVAILABLE)
    │   └── AuthenticationError   NATS refused the credentials, or they cannot be read
    │                             (UNAUTHENTICATED)
    ├── PermissionDeniedError     NATS refused a publish or subscription this identity may
    │                             not make (PERMISSION_DENIED)
    ├── ClientStateError          the client is not open (never opened, or closed)
    ├── InvalidArgumentError      a bad argument to an SDK call (also a ValueError)
    ├── CodecError                bytes that are not a valid envelope or payload
    │   └── PayloadTooLargeError  a payload over the configured limit
    ├── CallTimeoutError          the deadline passed (DEADLINE_EXCEEDED)
    ├── ServiceUnavailableError   nobody can serve the call right now (UNAVAILABLE)
    │   ├── RouterUnavailableError  no router answered
    │   └── StoreFullError          a stream or bucket is full: the message was refused
    └── RemoteError               the remote side answered with an error

No exception from nats-py, msgpack or pydantic crosses the SDK's public API: adapters wrap
them in one of these (``raise X(...) from e``), so ``except IPCError`` is always enough.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from ipc_client_sdk._contracts import ErrorCode, ErrorInfo


class IPCError(Exception):
    """Root of every error the SDK raises.

    Attributes:
        code: the closed status code of the failure.
        message: a human-readable sentence.
        call_id: the call this error belongs to, when there is one.
        service: the target service, when known.
        instance: the instance that answered or failed, when known.
        details: structured extra data (never a remote traceback by default).
        retryable: whether retrying the same call (same call_id) may succeed.
    """

    default_code: ErrorCode = ErrorCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        call_id: str | None = None,
        service: str | None = None,
        instance: str | None = None,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.code = code if code is not None else self.default_code
        self.message = message
        self.call_id = call_id
        self.service = service
        self.instance = instance
        self.details = dict(details or {})
        self.retryable = retryable if retryable is not None else self.code.retryable
        super().__init__(self._render())

    def _render(self) -> str:
        context = [
            f"{name}={value}"
            for name, value in (
                ("service", self.service),
                ("instance", self.instance),
                ("call_id", self.call_id),
            )
            if value
        ]
        suffix = f" ({', '.join(context)})" if context else ""
        return f"{self.code.value}: {self.message}{suffix}"

    def to_info(self) -> ErrorInfo:
        """The wire form of this error, for an error reply."""
        return ErrorInfo(
            code=self.code, message=self.message, details=self.details, retryable=self.retryable
        )


class IPCConnectionError(IPCError):
    """NATS could not be reached, or the connection was lost for good."""

    default_code = ErrorCode.UNAVAILABLE

    def __init__(self, servers: str, reason: str) -> None:
        self.servers = servers
        self.reason = reason
        super().__init__(f"cannot reach NATS at {servers}: {reason}")


class AuthenticationError(IPCConnectionError):
    """NATS refused this client's credentials, or a credentials file cannot be used.

    Raised at once, not after retries: trying the same credentials again cannot succeed.
    The message names the servers or the file, never a secret or a file's contents.

    Attributes:
        servers: the servers that refused (without credentials), or "" for a file problem.
        reason: why, in a few words.
    """

    default_code = ErrorCode.UNAUTHENTICATED

    def __init__(self, servers: str, reason: str) -> None:
        self.servers = servers
        self.reason = reason
        message = f"NATS at {servers} refused the connection: {reason}" if servers else reason
        IPCError.__init__(self, message)


class PermissionDeniedError(IPCError):
    """NATS refused an operation that this client's identity is not permitted: a publish
    (a call, an event, a request) or a subscription on ``subject``.

    Raised by the refused operation as soon as the server says so, not after its timeout.
    Not retryable: the same identity is refused again until the permissions change.

    Attributes:
        subject: the refused subject (or the subscription's pattern).
        operation: ``"publish"`` or ``"subscribe"``.
    """

    default_code = ErrorCode.PERMISSION_DENIED

    def __init__(self, subject: str, operation: str, **context: Any) -> None:
        self.subject = subject
        self.operation = operation
        super().__init__(
            f"NATS does not permit this identity to {operation} to {subject}", **context
        )


class ClientStateError(IPCError):
    """The client was used while not open: before ``connect()`` or after ``close()``."""

    default_code = ErrorCode.FAILED_PRECONDITION


class InvalidArgumentError(IPCError, ValueError):
    """An SDK method was given an argument it cannot use (a bad target, id or timeout).

    Raised before anything is sent, or when a stream refuses a message as larger than its
    largest message. It is also a ``ValueError``, so code written for plain Python argument
    errors catches it too.
    """

    default_code = ErrorCode.INVALID_ARGUMENT


class CodecReason(StrEnum):
    """Why bytes could not be turned into an envelope or payload."""

    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    INVALID_FIELDS = "invalid_fields"
    TOO_LARGE = "too_large"
    UNENCODABLE = "unencodable"


class CodecError(IPCError):
    """Bytes that are not a valid envelope or payload, or a value that cannot be encoded.

    Attributes:
        reason: which of the ``CodecReason`` cases this is.
    """

    default_code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, reason: CodecReason, message: str, **context: Any) -> None:
        self.reason = reason
        super().__init__(message, **context)


class PayloadTooLargeError(CodecError):
    """A payload over the configured size limit.

    Attributes:
        size: the payload's size in bytes.
        limit: the configured limit in bytes.
    """

    def __init__(self, size: int, limit: int, **context: Any) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            CodecReason.TOO_LARGE,
            f"payload of {size} bytes is over the {limit}-byte limit",
            **context,
        )


class CallTimeoutError(IPCError):
    """The call's deadline passed before an answer arrived."""

    default_code = ErrorCode.DEADLINE_EXCEEDED


class ServiceUnavailableError(IPCError):
    """Nobody can serve the call right now; retrying later may succeed.

    No healthy instance (raised at once), the instance is stopping or cannot reach its
    results bucket, the calls stream refused the call, or the handler raised UNAVAILABLE.
    """

    default_code = ErrorCode.UNAVAILABLE


class RouterUnavailableError(ServiceUnavailableError):
    """No router answered on the admin or request subjects."""


class StoreFullError(ServiceUnavailableError):
    """A JetStream stream or bucket (or the whole store) is full and refused the message:
    nothing was stored and nothing ran. Retryable: space comes back as old entries age out
    (or, for the calls stream, as a router takes the waiting calls).

    Attributes:
        store: the stream or bucket that refused, when known (e.g. ``IPC_CALLS``).
    """

    def __init__(self, message: str, *, store: str | None = None, **context: Any) -> None:
        self.store = store
        super().__init__(message, **context)


class RemoteError(IPCError):
    """The remote side answered with an error; ``code`` says which kind."""

    @classmethod
    def from_info(
        cls,
        info: ErrorInfo,
        *,
        call_id: str | None = None,
        service: str | None = None,
        instance: str | None = None,
    ) -> RemoteError:
        """Build the exception from an error that travelled in an envelope."""
        return cls(
            info.message,
            code=info.code,
            call_id=call_id,
            service=service,
            instance=instance,
            details=info.details,
            retryable=info.retryable,
        )
