"""The exception tree: one root, typed context on every error."""

from __future__ import annotations

import pytest

import ipc_client_sdk as sdk
from ipc_client_sdk import ErrorCode, ErrorInfo, RemoteError


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
