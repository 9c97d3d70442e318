"""AegisIPC client SDK: the one way a program talks AegisIPC.

The public API is re-exported here; everything else lives in private modules. Router and
tools that speak the wire protocol itself import ``ipc_client_sdk.protocol``.

Each name loads its module on first use (PEP 562), so that a program pays only for what
it touches: ``ipc status`` needs the client and the admin contracts, not serving, pub/sub
or tracing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipc_client_sdk._admin import AdminClient
    from ipc_client_sdk._client import IPCClient
    from ipc_client_sdk._codec import DEFAULT_MAX_PAYLOAD, Codec
    from ipc_client_sdk._contracts import (
        PROTOCOL_VERSION,
        ContractVersion,
        DeadLetter,
        ErrorCode,
        ErrorInfo,
        EventKind,
        MethodContract,
        MethodDescription,
        Promotion,
        Published,
        RouterEvent,
        RouterStatus,
        ServiceDescription,
    )
    from ipc_client_sdk._credentials import Credentials
    from ipc_client_sdk._errors import (
        AuthenticationError,
        CallTimeoutError,
        ClientStateError,
        CodecError,
        CodecReason,
        InvalidArgumentError,
        IPCConnectionError,
        IPCError,
        PayloadTooLargeError,
        PermissionDeniedError,
        RemoteError,
        RouterUnavailableError,
        ServiceUnavailableError,
        StoreFullError,
    )
    from ipc_client_sdk._events import RouterEvents
    from ipc_client_sdk._link import ClientState
    from ipc_client_sdk._pubsub import EventContext, Subscription
    from ipc_client_sdk._service import CallContext, Service
    from ipc_client_sdk._serving import RoleChange, ServiceInstance

__version__ = "0.1.0"

_MODULES = {
    "_admin": ("AdminClient",),
    "_client": ("IPCClient",),
    "_codec": ("DEFAULT_MAX_PAYLOAD", "Codec"),
    "_contracts": (
        "PROTOCOL_VERSION",
        "ContractVersion",
        "DeadLetter",
        "ErrorCode",
        "ErrorInfo",
        "EventKind",
        "MethodContract",
        "MethodDescription",
        "Promotion",
        "Published",
        "RouterEvent",
        "RouterStatus",
        "ServiceDescription",
    ),
    "_credentials": ("Credentials",),
    "_errors": (
        "AuthenticationError",
        "CallTimeoutError",
        "ClientStateError",
        "CodecError",
        "CodecReason",
        "InvalidArgumentError",
        "IPCConnectionError",
        "IPCError",
        "PayloadTooLargeError",
        "PermissionDeniedError",
        "RemoteError",
        "RouterUnavailableError",
        "ServiceUnavailableError",
        "StoreFullError",
    ),
    "_events": ("RouterEvents",),
    "_link": ("ClientState",),
    "_pubsub": ("EventContext", "Subscription"),
    "_service": ("CallContext", "Service"),
    "_serving": ("RoleChange", "ServiceInstance"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}
"""The private module that defines each public name."""

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "AdminClient",
    "AuthenticationError",
    "CallContext",
    "CallTimeoutError",
    "ClientState",
    "ClientStateError",
    "Codec",
    "CodecError",
    "ContractVersion",
    "CodecReason",
    "Credentials",
    "DeadLetter",
    "ErrorCode",
    "ErrorInfo",
    "EventContext",
    "EventKind",
    "IPCClient",
    "IPCConnectionError",
    "IPCError",
    "InvalidArgumentError",
    "MethodContract",
    "MethodDescription",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Promotion",
    "Published",
    "RemoteError",
    "RoleChange",
    "RouterEvent",
    "RouterEvents",
    "RouterStatus",
    "RouterUnavailableError",
    "Service",
    "ServiceDescription",
    "ServiceInstance",
    "ServiceUnavailableError",
    "StoreFullError",
    "Subscription",
    "__version__",
]


def __getattr__(name: str) -> object:
    """Load a public name's module on first use and keep the name here."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
