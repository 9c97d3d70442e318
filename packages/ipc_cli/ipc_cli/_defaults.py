"""The SDK's defaults and variable names that ``ipc --help`` shows, kept here so that the
help loads no SDK module (nats-py, pydantic, msgpack). A test checks they equal the SDK's."""

from __future__ import annotations

DEFAULT_SERVERS = "nats://127.0.0.1:4222"
DEFAULT_PREFIX = "ipc"
EVENT_KINDS = ("role", "health", "registry")
CREDENTIAL_ENV_VARS = {
    "nkey_seed_file": "IPC_NATS_NKEY",
    "creds_file": "IPC_NATS_CREDS",
    "user": "IPC_NATS_USER",
    "password": "IPC_NATS_PASSWORD",
    "token": "IPC_NATS_TOKEN",
    "tls_ca": "IPC_TLS_CA",
    "tls_cert": "IPC_TLS_CERT",
    "tls_key": "IPC_TLS_KEY",
    "inbox_prefix": "IPC_NATS_INBOX_PREFIX",
}
