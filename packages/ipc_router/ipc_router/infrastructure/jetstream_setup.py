"""Creating and checking the router's JetStream streams and KV buckets, idempotently.

A second router, or a restarted one, finds them in place: nothing is ever deleted or
purged here. Two routers starting at once may both try to create; the loser of that race
opens what the winner created.

Every stream and bucket is created with limits (``StorageLimits``): a byte cap, a message
cap where messages are the unit (the streams), a largest message where one message could
otherwise take a share of the store (calls, events, results), and the discard policy that
says what a full one does. An existing one with other limits is updated to these; one whose
subjects, retention or storage type differ is refused (``jetstream_assets``).

nats-server reserves each stream's byte cap against its ``max_file_store`` when the stream
is created or its cap raised, and refuses a cap that does not fit what is left; with every
stream capped, one that fills up cannot take the space another one needs.

Every JetStream failure leaves this module as a ``ProvisioningError``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from ipc_client_sdk.protocol import (
    DEFAULT_MAX_PAYLOAD,
    ENVELOPE_OVERHEAD,
    MAX_CONTRACTS_BYTES,
    Subjects,
)
from ipc_router.infrastructure.jetstream_assets import (
    Asset,
    ProvisioningError,
    ensure,
    retrying,
)
from ipc_router.infrastructure.sizes import format_size

_log = logging.getLogger("ipc_router.jetstream")

_MiB = 1024 * 1024
_GiB = 1024 * _MiB

_HEADER_ROOM = 4 * 1024
"""Bytes of NATS headers (message id, reply address, trace context) a message may carry."""

DEFAULT_MAX_MESSAGE = DEFAULT_MAX_PAYLOAD + ENVELOPE_OVERHEAD + _HEADER_ROOM
"""The largest call, event or result: a default client's largest envelope, with headers."""

CONTRACTS_VALUE_MAX = 2 * MAX_CONTRACTS_BYTES
"""The largest value in the contracts bucket: one instance's contracts (the router refuses
to keep more than ``MAX_CONTRACTS_BYTES`` of them as JSON, their MessagePack form is no
larger), with room for the versions it adds."""

__all__ = [
    "CONTRACTS_VALUE_MAX",
    "DEFAULT_MAX_MESSAGE",
    "ProvisioningError",
    "RouterStores",
    "StorageLimits",
    "StorageSettings",
    "provision",
]


@dataclass(frozen=True, slots=True)
class StorageLimits:
    """Caps on what the router's streams and buckets hold: bytes everywhere, messages in the
    streams, and the largest message. All positive.

    The defaults reserve about 7.6 GiB of JetStream file store in all (``reserved``),
    sized for a 2-core machine with 24 GiB of memory and the store on local disk;
    docs/architecture.md says why each is what it is.

    Raises:
        ValueError: a cap that is not a positive whole number, or a stream that could not
            hold one message of ``max_message_size``.
    """

    calls_max_bytes: int = 1 * _GiB
    calls_max_msgs: int = 1_000_000
    events_max_bytes: int = 2 * _GiB
    events_max_msgs: int = 5_000_000
    dead_letters_max_bytes: int = 256 * _MiB
    dead_letters_max_msgs: int = 100_000
    registry_max_bytes: int = 64 * _MiB
    contracts_max_bytes: int = 64 * _MiB
    routes_max_bytes: int = 256 * _MiB
    leases_max_bytes: int = 1 * _MiB
    results_max_bytes: int = 4 * _GiB
    max_message_size: int = DEFAULT_MAX_MESSAGE

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{f.name} must be a positive whole number, got {value!r}")
        for name in ("calls_max_bytes", "events_max_bytes", "results_max_bytes"):
            if getattr(self, name) < self.max_message_size:
                raise ValueError(
                    f"{name} ({format_size(getattr(self, name))}) is smaller than "
                    f"max_message_size ({format_size(self.max_message_size)}): it could not "
                    "hold one message"
                )

    @property
    def reserved(self) -> int:
        """Bytes JetStream reserves for all of them (per replica)."""
        return sum(getattr(self, f.name) for f in fields(self) if f.name.endswith("_max_bytes"))


DEFAULT_LEASE_TTL = 1.25
"""Seconds the router leadership lease lives without renewal: with the leader's term at
0.8 of it, a leader rides out an event-loop stall of a second, and a standby still leads
well inside two seconds of a leader's death."""


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
        limits: the byte and message caps.
    """

    replicas: int = 1
    call_retention_s: float = 24 * 3600
    result_ttl_s: float = 24 * 3600
    lease_ttl_s: float = DEFAULT_LEASE_TTL
    duplicate_window_s: float = 120.0
    event_retention_s: float = 24 * 3600
    dead_letter_retention_s: float = 7 * 24 * 3600
    limits: StorageLimits = field(default_factory=StorageLimits)


@dataclass(frozen=True, slots=True)
class RouterStores:
    """Handles on the router's KV buckets."""

    registry: KeyValue
    contracts: KeyValue
    routes: KeyValue
    leases: KeyValue
    results: KeyValue


def _streams(subjects: Subjects, settings: StorageSettings) -> list[Asset]:
    limits = settings.limits

    def stream(
        name: str,
        description: str,
        captured: str,
        retention: RetentionPolicy,
        discard: DiscardPolicy,
        max_age: float,
        max_bytes: int,
        max_msgs: int,
        max_msg_size: int = -1,
    ) -> Asset:
        config = StreamConfig(
            name=name,
            description=description,
            subjects=[captured],
            retention=retention,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=max_age,
            duplicate_window=settings.duplicate_window_s,
            max_bytes=max_bytes,
            max_msgs=max_msgs,
            max_msg_size=max_msg_size,
            discard=discard,
        )
        return Asset(
            kind="stream",
            name=name,
            stream=name,
            fixed={"subjects": [captured], "retention": retention, "storage": StorageType.FILE},
            limits={
                "description": description,
                "max_bytes": max_bytes,
                "max_msgs": max_msgs,
                "max_msg_size": max_msg_size,
                "max_age": max_age,
                "discard": discard,
                "duplicate_window": settings.duplicate_window_s,
            },
            create=lambda js: js.add_stream(config),
            replicas=settings.replicas,
        )

    return [
        stream(
            subjects.calls_stream,
            "AegisIPC accepted RPC calls, removed once answered",
            subjects.calls_all,
            RetentionPolicy.WORK_QUEUE,
            # Full: a new call is refused (the caller is told), never an accepted one dropped.
            DiscardPolicy.NEW,
            settings.call_retention_s,
            limits.calls_max_bytes,
            limits.calls_max_msgs,
            limits.max_message_size,
        ),
        stream(
            subjects.events_stream,
            "AegisIPC published events, kept for durable subscribers",
            subjects.events_stream_subjects,
            RetentionPolicy.LIMITS,
            # Full: the oldest events go, so a flood ages out old events and blocks nobody.
            DiscardPolicy.OLD,
            settings.event_retention_s,
            limits.events_max_bytes,
            limits.events_max_msgs,
            limits.max_message_size,
        ),
        stream(
            subjects.dead_letter_stream,
            "AegisIPC events subscribers could not take, with the error",
            subjects.dead_letter_all,
            RetentionPolicy.LIMITS,
            DiscardPolicy.OLD,
            settings.dead_letter_retention_s,
            limits.dead_letters_max_bytes,
            limits.dead_letters_max_msgs,
        ),
    ]


def _bucket(
    bucket: str,
    purpose: str,
    settings: StorageSettings,
    *,
    max_bytes: int,
    history: int = 1,
    ttl: float | None = None,
    max_value_size: int = -1,
    never_shorten_age: bool = False,
    direct: bool = False,
) -> Asset:
    description = f"AegisIPC {purpose}"
    config = KeyValueConfig(
        bucket=bucket,
        description=description,
        history=history,
        ttl=ttl,
        max_bytes=max_bytes,
        max_value_size=max_value_size,
        storage=StorageType.FILE,
        replicas=settings.replicas,
        direct=direct,
    )
    # Direct reads name the key in the subject, so NATS permissions can scope them (the
    # stream's MSG.GET API takes the key in the body, and cannot be).
    updatable: dict[str, Any] = {"allow_direct": True} if direct else {}
    return Asset(
        kind="bucket",
        name=bucket,
        stream=f"KV_{bucket}",
        fixed={
            "subjects": [f"$KV.{bucket}.>"],
            "retention": RetentionPolicy.LIMITS,
            "storage": StorageType.FILE,
        },
        # A full bucket refuses new keys (KV's DISCARD NEW): it never drops a live one.
        limits={
            "description": description,
            "max_bytes": max_bytes,
            "max_msg_size": max_value_size,
            "max_age": ttl or 0.0,
            "discard": DiscardPolicy.NEW,
            "max_msgs_per_subject": history,
        }
        | updatable,
        create=lambda js: js.create_key_value(config),
        replicas=settings.replicas,
        never_shorten_age=never_shorten_age,
    )


def _buckets(subjects: Subjects, settings: StorageSettings) -> list[Asset]:
    limits = settings.limits
    return [
        _bucket(
            subjects.registry_bucket,
            "registered instances",
            settings,
            max_bytes=limits.registry_max_bytes,
        ),
        # Full: a new instance's contracts are not saved (it is registered all the same).
        _bucket(
            subjects.contracts_bucket,
            "method contracts",
            settings,
            max_bytes=limits.contracts_max_bytes,
            max_value_size=CONTRACTS_VALUE_MAX,
        ),
        _bucket(
            subjects.routes_bucket,
            "claims and assignments",
            settings,
            max_bytes=limits.routes_max_bytes,
            history=5,
        ),
        # A bucket TTL shorter than a running router's lease would let two routers lead.
        _bucket(
            subjects.leases_bucket,
            "router lease",
            settings,
            max_bytes=limits.leases_max_bytes,
            ttl=settings.lease_ttl_s,
            never_shorten_age=True,
        ),
        # Full: a new claim is refused, so the call is refused unrun (never run twice).
        _bucket(
            subjects.results_bucket,
            "completed results",
            settings,
            max_bytes=limits.results_max_bytes,
            ttl=settings.result_ttl_s,
            max_value_size=limits.max_message_size,
            direct=True,  # a service reads only its own results: see _bucket
        ),
    ]


async def provision(
    js: JetStreamContext, subjects: Subjects, settings: StorageSettings
) -> RouterStores:
    """Ensure the streams (calls, events, dead letters) and the KV buckets exist with the
    configured limits, and open the buckets.

    Raises:
        ProvisioningError: JetStream is not enabled, not answering, or refused; or a stream
            or bucket exists with settings that would break a guarantee.
    """
    reserved = settings.limits.reserved
    _log.info(
        "this router's streams and buckets reserve %s of JetStream file store on each "
        "server that holds a replica (replicas: %d)",
        format_size(reserved),
        settings.replicas,
    )
    try:
        for asset in _streams(subjects, settings):
            await ensure(js, asset, reserved)
        stores: dict[str, KeyValue] = {}
        for asset in _buckets(subjects, settings):
            await ensure(js, asset, reserved)
            stores[asset.name] = await retrying(partial(js.key_value, asset.name))
        return RouterStores(
            registry=stores[subjects.registry_bucket],
            contracts=stores[subjects.contracts_bucket],
            routes=stores[subjects.routes_bucket],
            leases=stores[subjects.leases_bucket],
            results=stores[subjects.results_bucket],
        )
    except nats.errors.NoRespondersError as e:
        raise ProvisioningError("JetStream is not enabled on this NATS server") from e
    except nats.js.errors.APIError as e:
        raise ProvisioningError(f"JetStream refused: {e.description or e}") from e
    except nats.errors.Error as e:
        raise ProvisioningError(f"JetStream did not answer: {e or type(e).__name__}") from e
