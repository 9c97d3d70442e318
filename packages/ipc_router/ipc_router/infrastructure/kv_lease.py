"""``JetStreamLease``: router leadership as one key in the leases bucket.

The key is created with KV ``create``, which is atomic: of several routers, exactly one
succeeds (first come, first served). Its holder renews it with ``update`` against the last
revision it wrote; the bucket's TTL removes a key nobody renews, and then the next router's
``create`` succeeds. The value is the router id and a random per-process nonce, so two
processes given the same router id never both hold it; a router restarted after a crash
waits for its old lease to expire like any other.
"""

from __future__ import annotations

import contextlib
import logging
import os

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from ipc_router.application.errors import StoreUnavailableError
from ipc_router.infrastructure.jetstream_setup import ProvisioningError
from ipc_router.infrastructure.kv_store import guarded

_log = logging.getLogger("ipc_router.leadership")

LEADER_KEY = "router-leader"


class JetStreamLease:
    """The leadership lease for one router (``holder`` is its router id)."""

    def __init__(self, kv: KeyValue, bucket: str, holder: str, *, timeout: float = 2.0) -> None:
        self._kv = kv
        self._bucket = bucket
        self.holder = holder
        self._value = f"{holder} {os.urandom(8).hex()}".encode()
        self._timeout = timeout
        self._revision: int | None = None

    @property
    def held(self) -> bool:
        """Whether this router held the lease at its last successful acquire or renew."""
        return self._revision is not None

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it (or this process still does); whether it did.

        While another router holds it this costs one read (standbys try often).

        Raises:
            StoreUnavailableError: JetStream did not answer.
        """
        value = self._value
        async with guarded(self._bucket, self._timeout):
            try:
                entry = await self._kv.get(LEADER_KEY)
            except nats.js.errors.KeyNotFoundError:
                entry = None  # never written, expired, or released (a delete marker)
            try:
                if entry is None:
                    self._revision = await self._kv.create(LEADER_KEY, value)
                elif entry.value == value:
                    self._revision = await self._kv.update(LEADER_KEY, value, last=entry.revision)
                else:
                    return False
            except nats.js.errors.KeyWrongLastSequenceError:
                return False  # another router was faster
            return True

    async def renew(self, *, timeout: float | None = None) -> bool:
        """Extend the lease; False when it was lost (expired, or taken by another router).

        Args:
            timeout: the longest to wait for JetStream (default: the lease's own timeout).

        Raises:
            StoreUnavailableError: JetStream did not answer (the lease may still be held).
        """
        if self._revision is None:
            return False
        async with guarded(self._bucket, timeout or self._timeout):
            try:
                self._revision = await self._kv.update(LEADER_KEY, self._value, last=self._revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._revision = None
                return False
        return True

    def forget(self) -> None:
        """Consider the lease lost without asking JetStream (renewals failed too long)."""
        self._revision = None

    async def release(self) -> None:
        """Give the lease up so another router can take it at once. Never raises."""
        revision, self._revision = self._revision, None
        if revision is None:
            return
        with contextlib.suppress(StoreUnavailableError, nats.errors.Error):
            async with guarded(self._bucket, self._timeout):
                await self._kv.delete(LEADER_KEY, last=revision)


async def lease_ttl(kv: KeyValue, bucket: str, wanted: float) -> float:
    """The TTL the leases bucket enforces: what a leader must count its term against.

    A bucket created earlier with another TTL keeps it (shortening it under a running
    router that counts on the old one would let two routers lead), and a warning says so.

    Raises:
        ProvisioningError: the bucket has no TTL (a dead leader's lease would never
            expire), or JetStream did not answer.
    """
    try:
        status = await kv.status()
    except nats.errors.Error as e:
        raise ProvisioningError(f"cannot read KV bucket {bucket}: {e or type(e).__name__}") from e
    ttl = status.ttl or 0.0
    if ttl <= 0:
        raise ProvisioningError(
            f"KV bucket {bucket} has no TTL, so a dead leader's lease would never expire: "
            "delete the bucket (it holds only the lease) while no router runs"
        )
    if abs(ttl - wanted) > 0.001:
        _log.warning(
            "KV bucket %s keeps its lease TTL of %gs (asked for %gs); using %gs. To change "
            "it, delete the bucket (it holds only the lease) while no router runs",
            bucket,
            ttl,
            wanted,
            ttl,
        )
    return ttl
