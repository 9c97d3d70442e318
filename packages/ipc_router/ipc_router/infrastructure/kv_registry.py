"""``JetStreamInstanceRepository``: the instance registry in a JetStream KV bucket, and
``JetStreamContractRepository``: the method contracts the instances registered, in another.

One key per instance, ``<service>.<instance_id>``, holding a MessagePack map, in each. The
contracts are kept apart from the records because callers watch the registry bucket (their
routing cache) and the leader rewrites a record at every role change: neither should carry
up to ``MAX_CONTRACTS_BYTES`` of schemas each time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from nats.js.kv import KeyValue

from ipc_client_sdk import CodecError
from ipc_client_sdk.protocol import Codec, RateLimitedLog, clip, validate_token
from ipc_router.domain import Health, InstanceRecord, Role
from ipc_router.infrastructure.kv_store import guarded, scan

_log = logging.getLogger("ipc_router.registry")
_problems = RateLimitedLog(_log)  # whoever may write the bucket: few lines


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
        "methods": list(record.methods),
        "direct_methods": list(record.direct_methods),
        "direct": record.direct,
        "session": record.session,
        "load_balanced": record.load_balanced,
        "queued_at": record.queued_at,
        "draining": record.draining,
        "contracts": dict(record.contract_versions),
    }


def record_from_wire(data: dict[str, Any]) -> InstanceRecord:
    """Rebuild a record from its stored form.

    Raises:
        KeyError, ValueError, TypeError: the stored form is not a record (the names are
            checked as a registration checks them: the router logs them).
    """
    return InstanceRecord(
        service=validate_token(str(data["service"]), "service"),
        instance_id=validate_token(str(data["instance_id"]), "instance_id"),
        role=Role(data["role"]),
        health=Health(data["health"]),
        epoch=int(data["epoch"]),
        registered_at=float(data["registered_at"]),
        last_heartbeat_at=float(data["last_heartbeat_at"]),
        resources=tuple(str(r) for r in data.get("resources", ())),
        methods=tuple(str(m) for m in data.get("methods", ())),
        direct_methods=tuple(str(m) for m in data.get("direct_methods", ())),
        direct=bool(data.get("direct", False)),
        session=str(data.get("session", "")),
        load_balanced=bool(data.get("load_balanced", False)),
        queued_at=float(data.get("queued_at", 0.0)),
        draining=bool(data.get("draining", False)),
        contract_versions=tuple(
            (str(m), str(v)) for m, v in dict(data.get("contracts") or {}).items()
        ),
    )


class JetStreamInstanceRepository:
    """Instance registry backed by a KV bucket (satisfies ``InstanceRepository``).

    Args:
        kv: the registry bucket.
        bucket: its name, for error messages.
        codec: encodes the stored records.
        timeout: the longest one read or write may take; past it the operation fails with
            ``StoreUnavailableError`` rather than stall the caller (an admin endpoint
            serves one request at a time).
    """

    def __init__(
        self,
        kv: KeyValue,
        bucket: str,
        codec: Codec,
        *,
        timeout: float = 2.0,
        contracts: JetStreamContractRepository | None = None,
    ) -> None:
        self._kv = kv
        self._bucket = bucket
        self._codec = codec
        self._timeout = timeout
        self._contracts = contracts

    async def put(self, record: InstanceRecord) -> None:
        """Store (or replace) one record."""
        async with guarded(self._bucket, self._timeout):
            await self._kv.put(record.key, self._codec.encode(record_to_wire(record)))

    async def delete(self, service: str, instance_id: str) -> None:
        """Forget one instance (and the contracts it registered, when given them)."""
        async with guarded(self._bucket, self._timeout):
            await self._kv.delete(f"{service}.{instance_id}")
        if self._contracts is not None:
            await self._contracts.save(service, instance_id, None)

    async def list_instances(self) -> list[InstanceRecord]:
        """Every stored record, read in one pass over the bucket.

        Entries that cannot be decoded are logged and skipped, not fatal: one bad entry must
        not blind the router to the rest.
        """
        async with guarded(self._bucket, self._timeout):
            entries = await scan(self._kv)
        records: list[InstanceRecord] = []
        for key, value in entries:
            try:
                records.append(record_from_wire(self._codec.decode(value)))
            except (CodecError, KeyError, ValueError, TypeError) as e:
                _problems.warning(
                    "unreadable", "skipping unreadable registry entry %s: %s", clip(key), clip(e)
                )
        return records


class JetStreamContractRepository:
    """The contracts each instance registered, in a KV bucket (satisfies
    ``ContractRepository``): ``<service>.<instance_id>`` -> method -> contract.

    Args:
        kv: the contracts bucket.
        bucket: its name, for error messages.
        codec: encodes the stored contracts.
        timeout: the longest one read or write may take (``StoreUnavailableError`` past it).
    """

    def __init__(self, kv: KeyValue, bucket: str, codec: Codec, *, timeout: float = 2.0) -> None:
        self._kv = kv
        self._bucket = bucket
        self._codec = codec
        self._timeout = timeout

    async def save(
        self, service: str, instance_id: str, contracts: Mapping[str, Mapping[str, Any]] | None
    ) -> None:
        """Store an instance's contracts, or forget them (None)."""
        key = f"{service}.{instance_id}"
        async with guarded(self._bucket, self._timeout):
            if contracts is None:
                await self._kv.delete(key)
            else:
                await self._kv.put(key, self._codec.encode(dict(contracts)))

    async def load(self) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """Every instance's contracts, by (service, instance_id); unreadable entries are
        logged and skipped."""
        async with guarded(self._bucket, self._timeout):
            entries = await scan(self._kv)
        found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for key, value in entries:
            service, _, instance_id = key.partition(".")
            try:
                data = self._codec.decode(value)
                if not isinstance(data, dict):
                    raise TypeError("not a map")
                found[(service, instance_id)] = {
                    str(m): dict(c) for m, c in data.items() if isinstance(c, dict)
                }
            except (CodecError, TypeError, ValueError) as e:
                _problems.warning(
                    "unreadable-contracts",
                    "skipping unreadable contracts entry %s: %s",
                    clip(key),
                    clip(e),
                )
        return found
