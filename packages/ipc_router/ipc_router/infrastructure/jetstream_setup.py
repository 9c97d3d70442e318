"""Creating the router's JetStream streams and KV buckets, idempotently.

A second router, or a restarted one, finds them in place and uses them as they are: nothing
is ever deleted or purged here. Two routers starting at once may both try to create; the
loser of that race opens what the winner created.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from ipc_client_sdk.protocol import Subjects

_log = logging.getLogger("ipc_router.jetstream")


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
    """

    replicas: int = 1
    call_retention_s: float = 24 * 3600
    result_ttl_s: float = 24 * 3600
    lease_ttl_s: float = 5.0
    duplicate_window_s: float = 120.0


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
    """Ensure the calls stream and the KV buckets exist, and open them.

    Raises:
        ProvisioningError: JetStream is not enabled or refused a creation.
    """
    await _ensure_stream(
        js,
        StreamConfig(
            name=subjects.calls_stream,
            description="AegisIPC accepted RPC calls, removed once answered",
            subjects=[subjects.calls_all],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.call_retention_s,
            duplicate_window=settings.duplicate_window_s,
        ),
    )
    return RouterStores(
        registry=await _ensure_bucket(
            js, subjects.registry_bucket, settings, "registered instances"
        ),
        routes=await _ensure_bucket(
            js, subjects.routes_bucket, settings, "resource routes, roles and epochs", history=5
        ),
        leases=await _ensure_bucket(
            js, subjects.leases_bucket, settings, "router lease", ttl=settings.lease_ttl_s
        ),
        results=await _ensure_bucket(
            js, subjects.results_bucket, settings, "completed results", ttl=settings.result_ttl_s
        ),
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
        _log.debug("stream %s exists", config.name)
        return
    except nats.js.errors.NotFoundError:
        pass
    except nats.js.errors.ServiceUnavailableError as e:
        raise ProvisioningError(f"JetStream is not available: {e.description}") from e
    except nats.errors.NoRespondersError as e:
        raise ProvisioningError("JetStream is not enabled on this NATS server") from e
    try:
        await js.add_stream(config)
        _log.info("created stream %s", config.name)
    except nats.js.errors.BadRequestError:
        # Lost a creation race to another router: use what it created.
        await js.stream_info(config.name)
    except nats.js.errors.APIError as e:
        raise ProvisioningError(f"cannot create stream {config.name}: {e.description}") from e


async def _ensure_bucket(
    js: JetStreamContext,
    bucket: str,
    settings: StorageSettings,
    purpose: str,
    *,
    history: int = 1,
    ttl: float | None = None,
) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    except nats.errors.NoRespondersError as e:
        raise ProvisioningError("JetStream is not enabled on this NATS server") from e
    config = KeyValueConfig(
        bucket=bucket,
        description=f"AegisIPC {purpose}",
        history=history,
        ttl=ttl,
        storage=StorageType.FILE,
        replicas=settings.replicas,
    )
    try:
        kv = await js.create_key_value(config)
        _log.info("created KV bucket %s", bucket)
        return kv
    except nats.js.errors.BadRequestError:
        return await js.key_value(bucket)
    except nats.js.errors.APIError as e:
        raise ProvisioningError(f"cannot create KV bucket {bucket}: {e.description}") from e
