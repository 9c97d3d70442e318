"""``JetStreamRouteRepository``: claims and sticky assignments in a JetStream KV bucket.

Keys: ``claim.<service>.<resource>`` holds the claimants (owner first) as a MessagePack
list; ``assign.<service>.<resource>`` holds the instance an unclaimed resource is assigned
to. Removing a claim or an assignment deletes its key.
"""

from __future__ import annotations

import logging

from nats.js.kv import KeyValue

from ipc_client_sdk import CodecError
from ipc_client_sdk.protocol import Codec, RateLimitedLog, clip, validate_token
from ipc_router.application.ports import SavedRoutes
from ipc_router.infrastructure.kv_store import guarded, scan

_log = logging.getLogger("ipc_router.routes")
_problems = RateLimitedLog(_log)  # whoever may write the bucket: few lines

_CLAIM = "claim"
_ASSIGN = "assign"


def read_route_entry(
    key: str,
    decoded: object,
    claims: dict[tuple[str, str], list[str]],
    assignments: dict[tuple[str, str], str],
) -> None:
    """Put one decoded entry of the routes bucket into ``claims`` or ``assignments``.

    Raises:
        ValueError: not a claim or an assignment (whoever may write the bucket chooses
            these names; the router logs them).
    """
    kind, _, rest = key.partition(".")
    service, _, resource = rest.partition(".")
    validate_token(service, "service")
    validate_token(resource, "resource")
    if kind == _CLAIM and isinstance(decoded, list):
        claims[(service, resource)] = [validate_token(str(c), "instance_id") for c in decoded]
    elif kind == _ASSIGN and isinstance(decoded, str):
        assignments[(service, resource)] = validate_token(decoded, "instance_id")
    else:
        raise ValueError("not a claim or an assignment")


class JetStreamRouteRepository:
    """Routes backed by a KV bucket (satisfies ``RouteRepository``)."""

    def __init__(self, kv: KeyValue, bucket: str, codec: Codec, *, timeout: float = 2.0) -> None:
        self._kv = kv
        self._bucket = bucket
        self._codec = codec
        self._timeout = timeout

    async def load(self) -> SavedRoutes:
        """Every claim and assignment; unreadable entries are logged and skipped."""
        async with guarded(self._bucket, self._timeout):
            entries = await scan(self._kv)
        claims: dict[tuple[str, str], list[str]] = {}
        assignments: dict[tuple[str, str], str] = {}
        for key, value in entries:
            try:
                read_route_entry(key, self._codec.decode(value), claims, assignments)
            except (CodecError, ValueError) as e:
                _problems.warning(
                    "unreadable", "skipping unreadable route entry %s: %s", clip(key), clip(e)
                )
        return SavedRoutes(claims=claims, assignments=assignments)

    async def save_claim(self, service: str, resource: str, claimants: list[str]) -> None:
        """Record a resource's claimants (empty: remove the claim)."""
        await self._save(f"{_CLAIM}.{service}.{resource}", claimants or None)

    async def save_assignment(self, service: str, resource: str, instance_id: str | None) -> None:
        """Record an unclaimed resource's instance (None: remove the assignment)."""
        await self._save(f"{_ASSIGN}.{service}.{resource}", instance_id)

    async def _save(self, key: str, value: object) -> None:
        async with guarded(self._bucket, self._timeout):
            if value is None:
                await self._kv.delete(key)
            else:
                await self._kv.put(key, self._codec.encode(value))
