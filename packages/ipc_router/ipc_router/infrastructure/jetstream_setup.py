"""Creating the router's JetStream streams and KV buckets, idempotently.

A second router, or a restarted one, finds them in place and uses them as they are: nothing
is ever deleted or purged here. Two routers starting at once may both try to create; the
loser of that race opens what the winner created. A stream that exists but captures other
subjects, or keeps messages differently, is refused: using it would lose calls silently.
Every JetStream failure leaves this module as a ``ProvisioningError``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from ipc_client_sdk.protocol import Subjects

_log = logging.getLogger("ipc_router.jetstream")

_ATTEMPTS = 6
"""JetStream API calls retried on timeout or 503 (no leader yet), about 10 s in all."""


class ProvisioningError(Exception):
    """JetStream refused to create or open a stream or bucket the router needs."""


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Sizing of what the router keeps in JetStream.

    Args:
        replicas: copies of each stream and bucket (1, or 3 on a 3-node cluster).
        call_retention_s: how long an accepted call may wait in the calls stream.
        result_ttl_s: how long a completed result is kept for de-duplication.
        lease_ttl_s: how long the router leadership lease lives without renewal.
        duplicate_window_s: JetStream's de-duplication window on ``Nats-Msg-Id``.
        event_retention_s: how long published events are kept for durable subscribers.
        dead_letter_retention_s: how long dead letters are kept for inspection.
    """

    replicas: int = 1
    call_retention_s: float = 24 * 3600
    result_ttl_s: float = 24 * 3600
    lease_ttl_s: float = 1.0
    duplicate_window_s: float = 120.0
    event_retention_s: float = 24 * 3600
    dead_letter_retention_s: float = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class RouterStores:
    """Handles on the router's KV buckets."""

    registry: KeyValue
    routes: KeyValue
    leases: KeyValue
    results: KeyValue


async def provision(
    js: JetStreamContext, subjects: Subjects, settings: StorageSettings
) -> RouterStores:
    """Ensure the streams (calls, events, dead letters) and the KV buckets exist, and open
    the buckets.

    Raises:
        ProvisioningError: JetStream is not enabled, not answering, or refused.
    """
    streams = (
        (
            subjects.calls_stream,
            "AegisIPC accepted RPC calls, removed once answered",
            subjects.calls_all,
            RetentionPolicy.WORK_QUEUE,
            settings.call_retention_s,
        ),
        (
            subjects.events_stream,
            "AegisIPC published events, kept for durable subscribers",
            subjects.events_stream_subjects,
            RetentionPolicy.LIMITS,
            settings.event_retention_s,
        ),
        (
            subjects.dead_letter_stream,
            "AegisIPC events subscribers could not take, with the error",
            subjects.dead_letter_all,
            RetentionPolicy.LIMITS,
            settings.dead_letter_retention_s,
        ),
    )
    try:
        for name, description, captured, retention, max_age in streams:
            config = StreamConfig(
                name=name,
                description=description,
                subjects=[captured],
                retention=retention,
                storage=StorageType.FILE,
                num_replicas=settings.replicas,
                max_age=max_age,
                duplicate_window=settings.duplicate_window_s,
            )
            await _ensure_stream(js, config)
        bucket = _BucketMaker(js, settings)
        return RouterStores(
            registry=await bucket(subjects.registry_bucket, "registered instances"),
            routes=await bucket(subjects.routes_bucket, "claims and assignments", history=5),
            leases=await bucket(subjects.leases_bucket, "router lease", ttl=settings.lease_ttl_s),
            results=await bucket(
                subjects.results_bucket, "completed results", ttl=settings.result_ttl_s
            ),
        )
    except nats.errors.NoRespondersError as e:
        raise ProvisioningError("JetStream is not enabled on this NATS server") from e
    except nats.js.errors.APIError as e:
        raise ProvisioningError(f"JetStream refused: {e.description or e}") from e
    except nats.errors.Error as e:
        raise ProvisioningError(f"JetStream did not answer: {e or type(e).__name__}") from e


async def _retrying[T](operation: Callable[[], Awaitable[T]]) -> T:
    """Retry JetStream API calls that time out or get 503 (no meta leader, cluster forming)."""
    delay = 0.2
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await operation()
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as e:
            if attempt == _ATTEMPTS:
                raise
            _log.warning("JetStream busy (%s); retrying in %.1fs", type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)
    raise AssertionError("unreachable")  # pragma: no cover


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    name = config.name
    assert name is not None
    try:
        info = await _retrying(lambda: js.stream_info(name))
    except nats.js.errors.NotFoundError:
        try:
            await _retrying(lambda: js.add_stream(config))
            _log.info("created stream %s", name)
            return
        except nats.js.errors.BadRequestError as e:
            # Either another router created it a moment ago (then it is there now), or
            # the server refused ours (overlapping subjects, say): the error says which.
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                raise ProvisioningError(f"cannot create stream {name}: {e.description or e}") from e
    found = info.config
    if sorted(found.subjects or []) != sorted(config.subjects or []) or (
        found.retention != config.retention
    ):
        raise ProvisioningError(
            f"stream {name} exists with subjects {found.subjects} and retention "
            f"{found.retention}, not {config.subjects} and {config.retention}: "
            "another deployment uses this name; pick another --prefix"
        )
    if found.num_replicas != config.num_replicas:
        _log.warning(
            "stream %s has %s replicas, not the %s asked for; keeping it as it is",
            name,
            found.num_replicas,
            config.num_replicas,
        )


class _BucketMaker:
    """Opens a KV bucket, creating it first when it is missing."""

    def __init__(self, js: JetStreamContext, settings: StorageSettings) -> None:
        self._js = js
        self._settings = settings

    async def __call__(
        self, bucket: str, purpose: str, *, history: int = 1, ttl: float | None = None
    ) -> KeyValue:
        js = self._js
        try:
            return await _retrying(lambda: js.key_value(bucket))
        except nats.js.errors.BucketNotFoundError:
            pass
        config = KeyValueConfig(
            bucket=bucket,
            description=f"AegisIPC {purpose}",
            history=history,
            ttl=ttl,
            storage=StorageType.FILE,
            replicas=self._settings.replicas,
        )
        try:
            kv = await _retrying(lambda: js.create_key_value(config))
        except nats.js.errors.BadRequestError as e:
            try:
                return await js.key_value(bucket)  # lost a creation race
            except nats.js.errors.BucketNotFoundError:
                raise ProvisioningError(
                    f"cannot create KV bucket {bucket}: {e.description or e}"
                ) from e
        _log.info("created KV bucket %s", bucket)
        return kv
