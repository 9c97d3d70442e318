"""Confirming a takeover notice before an instance acts on it.

The leading router answers a heartbeat from a process whose instance id another process
holds now with ``FAILED_PRECONDITION``; the process that gets it must stop serving for good.
That answer arrives on the instance's control subject, where anyone allowed to publish
could send one, so a single forged message would silence a healthy instance. The instance
therefore stops only when its own record in the registry bucket, which only the leading
router writes, names another session: a forged notice costs a log line and one KV read.

Reading the record takes one JetStream request, answered by the stream's servers. Without
NATS permissions a determined attacker could race that answer too; with them (the router
alone writes the bucket and publishes on the instance's subjects) neither can be forged.
"""

from __future__ import annotations

import asyncio
import enum

import nats.errors
import nats.js.errors

from ipc_client_sdk._errors import IPCError
from ipc_client_sdk._link import Link


class Takeover(enum.Enum):
    """What the registry bucket says of a takeover notice."""

    CONFIRMED = "confirmed"
    """The record names another session: another process holds the instance id."""
    DENIED = "denied"
    """The record names this process's session, or there is none (nobody took over)."""
    UNKNOWN = "unknown"
    """The record could not be read (no answer, not allowed, not a record)."""


async def check_takeover(
    link: Link, service: str, instance_id: str, session: str, *, timeout: float
) -> Takeover:
    """Whether the instance's registry record confirms that another process holds it.

    Never raises (a cancellation aside).
    """
    key = f"{service}.{instance_id}"
    try:
        async with asyncio.timeout(timeout):
            kv = await link.nats.jetstream().key_value(link.subjects.registry_bucket)
            entry = await kv.get(key)
        record = link.codec.decode(entry.value or b"")
        holder = str(record["session"]) if isinstance(record, dict) else None
    except nats.js.errors.KeyNotFoundError:
        return Takeover.DENIED  # deregistered or reaped: the next heartbeat registers again
    except (nats.errors.Error, TimeoutError, IPCError, KeyError):  # not a record, or closed
        return Takeover.UNKNOWN
    if holder is None:
        return Takeover.UNKNOWN
    return Takeover.DENIED if holder in ("", session) else Takeover.CONFIRMED
