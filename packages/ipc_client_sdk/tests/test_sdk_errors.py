"""The exception tree: one root, typed context on every error."""

from __future__ import annotations

import nats.js.errors
import pytest

import ipc_client_sdk as sdk
from ipc_client_sdk import ErrorCode, ErrorInfo, RemoteError
from ipc_client_sdk._calling import refusal_error


@pytest.mark.parametrize(
    "cls",
    [
        sdk.IPCConnectionError,
        sdk.ClientStateError,
        sdk.CodecError,
        sdk.PayloadTooLargeError,
        sdk.CallTimeoutError,
        sdk.ServiceUnavailableError,
        sdk.RouterUnavailableError,
        sdk.StoreFullError,
        sdk.RemoteError,
    ],
)
def test_every_error_is_an_ipc_error(cls: type[Exception]) -> None:
    assert issubclass(cls, sdk.IPCError)


def test_default_codes() -> None:
    assert sdk.CallTimeoutError("late").code is ErrorCode.DEADLINE_EXCEEDED
    assert sdk.ServiceUnavailableError("none").code is ErrorCode.UNAVAILABLE
    assert sdk.IPCConnectionError("nats://x", "refused").code is ErrorCode.UNAVAILABLE


def test_remote_error_carries_the_wire_error_and_context() -> None:
    info = ErrorInfo(code=ErrorCode.INVALID_ARGUMENT, message="qty must be > 0", details={"f": 1})
    err = RemoteError.from_info(info, call_id="c-1", service="orders", instance="o1")
    assert (err.code, err.message, err.call_id, err.service, err.instance) == (
        ErrorCode.INVALID_ARGUMENT,
        "qty must be > 0",
        "c-1",
        "orders",
        "o1",
    )
    assert err.details == {"f": 1}
    assert err.retryable is False
    assert "service=orders" in str(err) and "call_id=c-1" in str(err)
    assert err.to_info() == info


def test_retryable_follows_the_code_unless_told() -> None:
    assert sdk.ServiceUnavailableError("x").retryable is True
    assert sdk.RemoteError("x", code=ErrorCode.INTERNAL).retryable is False
    assert sdk.RemoteError("x", code=ErrorCode.INTERNAL, retryable=True).retryable is True


def test_public_api_is_exported() -> None:
    for name in sdk.__all__:
        assert hasattr(sdk, name), name


@pytest.mark.parametrize(
    ("err_code", "description", "expected"),
    [
        (10077, "maximum bytes exceeded", sdk.StoreFullError),
        (10077, "maximum messages exceeded", sdk.StoreFullError),
        (10023, "insufficient resources", sdk.StoreFullError),
        (10054, "message size exceeds maximum allowed", sdk.InvalidArgumentError),
        (10077, "disk I/O error", sdk.ServiceUnavailableError),
    ],
)
def test_a_stream_refusal_says_why(
    err_code: int, description: str, expected: type[sdk.IPCError]
) -> None:
    refused = nats.js.errors.APIError(
        code=503, err_code=err_code, description=description, stream="IPC_EVENTS"
    )
    error = refusal_error(refused, "the event", call_id=None, service=None)
    assert type(error) is expected
    assert error.message.startswith("IPC_EVENTS ")
