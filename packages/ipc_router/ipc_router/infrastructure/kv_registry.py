"""``JetStreamInstanceRepository``: the instance registry in a JetStream KV bucket.

One key per instance, ``<service>.<instance_id>``, holding a MessagePack map.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.errors
from nats.js.kv import KeyValue

from ipc_client_sdk import CodecError
from ipc_client_sdk.protocol import Codec
from ipc_router.application.errors import StoreUnavailableError
from ipc_router.domain import Health, InstanceRecord, Role

_log = logging.getLogger("ipc_router.registry")


def record_to_wire(record: InstanceRecord) -> dict[str, Any]:
    """The stored form of a record."""
    return {
        "service": record.service,
        "instance_id": record.instance_id,
        "role": record.role.value,
        "health": record.health.value,
        "epoch": record.epoch,
        "registered_at": record.registered_at,
        "last_heartbeat_at": record.last_heartbeat_at,
        "resources": list(record.resources),
    }


def record_from_wire(data: dict[str, Any]) -> InstanceRecord:
    """Rebuild a record from its stored form.

    Raises:
        KeyError, ValueError, TypeError: the stored form is not a record.
    """
    return InstanceRecord(
        service=str(data["service"]),
        instance_id=str(data["instance_id"]),
        role=Role(data["role"]),
        health=Health(data["health"]),
        epoch=int(data["epoch"]),
        registered_at=float(data["registered_at"]),
        last_heartbeat_at=float(data["last_heartbeat_at"]),
        resources=tuple(str(r) for r in data.get("resources", ())),
    )


class JetStreamInstanceRepository:
    """Instance registry backed by a KV bucket (satisfies ``InstanceRepository``).

    Args:
        kv: the registry bucket.
        codec: encodes the stored records.
        scan_timeout: the longest a full read may take; past it the read fails with
            ``StoreUnavailableError`` rather than stall the caller (an admin endpoint
            serves one request at a time).
    """

    def __init__(self, kv: KeyValue, codec: Codec, *, scan_timeout: float = 2.0) -> None:
        self._kv = kv
        self._codec = codec
        self._scan_timeout = scan_timeout

    async def put(self, record: InstanceRecord) -> None:
        """Store (or replace) one record."""
        await self._kv.put(record.key, self._codec.encode(record_to_wire(record)))

    async def list_instances(self) -> list[InstanceRecord]:
        """Every stored record, read in one pass over the bucket.

        Entries that cannot be decoded are logged and skipped, not fatal: one bad entry must
        not blind the router to the rest.
        """
        try:
            async with asyncio.timeout(self._scan_timeout):
                return await self._scan()
        except TimeoutError as e:
            raise StoreUnavailableError(
                "instance registry", f"no full read within {self._scan_timeout:g}s"
            ) from e
        except nats.errors.Error as e:
            raise StoreUnavailableError("instance registry", str(e) or type(e).__name__) from e

    async def _scan(self) -> list[InstanceRecord]:
        watcher = await self._kv.watchall(ignore_deletes=True)
        records: list[InstanceRecord] = []
        try:
            async for entry in watcher:
                if entry is None:
                    break  # end of the current snapshot
                if not entry.value:
                    continue
                try:
                    records.append(record_from_wire(self._codec.decode(entry.value)))
                except (CodecError, KeyError, ValueError, TypeError) as e:
                    _log.warning("skipping unreadable registry entry %s: %s", entry.key, e)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
        return records
