"""AegisIPC client SDK: the one way a program talks AegisIPC.

The public API is re-exported here; everything else lives in private modules. Router and
tools that speak the wire protocol itself import ``ipc_client_sdk.protocol``.
"""

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
