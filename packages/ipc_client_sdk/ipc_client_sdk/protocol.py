"""The wire protocol kit, for the router and tools that speak AegisIPC's protocol itself.

Application code should not need this module: ``IPCClient`` does all of it.
"""

from ipc_client_sdk._codec import DEFAULT_MAX_PAYLOAD, ENVELOPE_OVERHEAD, Codec
from ipc_client_sdk._contracts import (
    MSG_ID_HEADER,
    PROTOCOL_VERSION,
    REFUSED_HEADER,
    REPLY_TO_HEADER,
    AdminReply,
    AdminRequest,
    CallReply,
    CallRequest,
    Envelope,
    ErrorCode,
    ErrorInfo,
    Heartbeat,
    InstanceState,
    NatsServerInfo,
    Promotion,
    Registration,
    RegistrationResult,
    RouterEvent,
    RouterStatus,
)
from ipc_client_sdk._nats import (
    DEFAULT_SERVERS,
    close_nats,
    open_nats,
    parse_servers,
    redact_url,
    servers_label,
)
from ipc_client_sdk._subjects import (
    DEFAULT_PREFIX,
    Subjects,
    new_call_id,
    validate_call_id,
    validate_token,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_PREFIX",
    "DEFAULT_SERVERS",
    "ENVELOPE_OVERHEAD",
    "MSG_ID_HEADER",
    "PROTOCOL_VERSION",
    "REFUSED_HEADER",
    "REPLY_TO_HEADER",
    "AdminReply",
    "AdminRequest",
    "CallReply",
    "CallRequest",
    "Codec",
    "Envelope",
    "ErrorCode",
    "ErrorInfo",
    "Heartbeat",
    "InstanceState",
    "NatsServerInfo",
    "Promotion",
    "Registration",
    "RegistrationResult",
    "RouterEvent",
    "RouterStatus",
    "Subjects",
    "close_nats",
    "new_call_id",
    "open_nats",
    "parse_servers",
    "redact_url",
    "servers_label",
    "validate_call_id",
    "validate_token",
]
