"""Checking one JetStream stream or KV bucket against what the router wants of it.

``ensure`` creates an ``Asset`` when it is missing. When it exists, the settings the router
relies on and JetStream cannot change in place (``fixed``: subjects, retention, storage
type) must be as wanted, or it is refused with one line naming the asset, the setting and
both values; the limits (byte and message caps, largest message, max age, discard policy,
description, history) are updated to the wanted ones with ``update_stream``, in one call,
and the change is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StreamInfo

from ipc_router.infrastructure.sizes import format_size

_log = logging.getLogger("ipc_router.jetstream")

_ATTEMPTS = 6
"""JetStream API calls retried on timeout or 503 (no leader yet), about 10 s in all."""

_NO_ROOM = 10047
"""JetStream's error code for "insufficient storage resources available" (a cap that does
not fit what the server has left to reserve)."""


class ProvisioningError(Exception):
    """JetStream refused to create or open a stream or bucket the router needs, or found
    one whose settings would break a guarantee."""


@dataclass(frozen=True, slots=True)
class Asset:
    """One stream or bucket as the router wants it.

    Attributes:
        kind: ``"stream"`` or ``"bucket"``, for messages.
        name: the name an operator knows it by (a bucket's, not its stream's).
        stream: the JetStream stream behind it.
        fixed: settings JetStream cannot change in place and the router relies on, by
            ``StreamConfig`` field.
        limits: settings it updates when it finds them different, by ``StreamConfig`` field.
        create: creates it as wanted.
        replicas: copies wanted (a difference is kept, with a warning).
        never_shorten_age: a max age found longer than wanted is kept (the leases bucket:
            a TTL shorter than a running router's lease could let two routers lead).
    """

    kind: str
    name: str
    stream: str
    fixed: dict[str, Any]
    limits: dict[str, Any]
    create: Callable[[JetStreamContext], Awaitable[object]]
    replicas: int
    never_shorten_age: bool = False


_WHY_FIXED = {
    "subjects": "another deployment (or a hand-made stream) uses this name; pick another "
    "--prefix",
    "retention": "JetStream cannot change it in place, and another policy would remove "
    "messages the router still needs or keep ones it removes; remove it or pick another "
    "--prefix",
    "storage": "JetStream cannot change it in place, and a memory store loses accepted calls "
    "and recorded results when nats-server restarts; remove it or pick another --prefix",
}


async def retrying[T](operation: Callable[[], Awaitable[T]]) -> T:
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


def _no_room(asset: Asset, reserved: int, e: nats.js.errors.APIError) -> ProvisioningError:
    return ProvisioningError(
        f"JetStream has no room to reserve {format_size(asset.limits['max_bytes'])} for "
        f"{asset.kind} {asset.name} ({e.description}): this router reserves "
        f"{format_size(reserved)} in all; lower the --*-max-bytes caps, or give nats-server "
        "a larger max_file_store (or the account a larger JetStream storage limit)"
    )


async def ensure(js: JetStreamContext, asset: Asset, reserved: int) -> None:
    """Create ``asset`` when missing; otherwise check it and update its limits."""
    try:
        info = await retrying(lambda: js.stream_info(asset.stream))
    except nats.js.errors.NotFoundError:
        try:
            await retrying(lambda: asset.create(js))
            _log.info("created %s %s", asset.kind, asset.name)
            return
        except nats.js.errors.APIError as e:
            if e.err_code == _NO_ROOM:
                raise _no_room(asset, reserved, e) from e
            if not isinstance(e, nats.js.errors.BadRequestError):
                raise
            # Either another router created it a moment ago (then it is there now), or
            # the server refused ours (overlapping subjects, say): the error says which.
            try:
                info = await js.stream_info(asset.stream)
            except nats.js.errors.NotFoundError:
                raise ProvisioningError(
                    f"cannot create {asset.kind} {asset.name}: {e.description or e}"
                ) from e
    await _check(js, asset, info, reserved)


def _normal(name: str, value: Any) -> Any:
    """A setting as JetStream reports it, so that found and wanted values compare."""
    if name == "subjects":
        return sorted(value or [])
    if name in ("max_age", "duplicate_window"):
        return round(float(value or 0), 3)
    if name in ("max_bytes", "max_msgs", "max_msg_size"):
        return -1 if value is None or value <= 0 else value
    if name == "description":
        return value or ""
    return value


def _shown(name: str, value: Any) -> str:
    if name in ("max_bytes", "max_msg_size"):
        return "unlimited" if value == -1 else format_size(value)
    if name == "max_msgs":
        return "unlimited" if value == -1 else str(value)
    if name in ("max_age", "duplicate_window"):
        return "unlimited" if value == 0 else f"{value:g}s"
    if name == "description":
        return repr(value)
    return str(getattr(value, "value", value))


async def _check(js: JetStreamContext, asset: Asset, info: StreamInfo, reserved: int) -> None:
    """Refuse ``asset`` found with other fixed settings; update its limits to ours."""
    found = info.config
    for name, wanted in asset.fixed.items():
        have, want = _normal(name, getattr(found, name)), _normal(name, wanted)
        if have != want:
            raise ProvisioningError(
                f"{asset.kind} {asset.name} exists with {name} {_shown(name, have)}, not "
                f"{_shown(name, want)}: {_WHY_FIXED[name]}"
            )
    if found.num_replicas != asset.replicas:
        _log.warning(
            "%s %s has %s replicas, not the %s asked for; keeping it as it is",
            asset.kind,
            asset.name,
            found.num_replicas,
            asset.replicas,
        )
    changes: dict[str, Any] = {}
    for name, wanted in asset.limits.items():
        have, want = _normal(name, getattr(found, name)), _normal(name, wanted)
        if have == want:
            continue
        if name == "max_age" and asset.never_shorten_age and have > want > 0:
            _log.warning(
                "%s %s keeps its TTL of %s, longer than this router's %s: shortening it "
                "under a router that runs with the longer one could let two routers lead. "
                "A router that dies is replaced after the longer TTL; to apply the shorter, "
                "stop every router and delete the bucket",
                asset.kind,
                asset.name,
                _shown(name, have),
                _shown(name, want),
            )
            continue
        changes[name] = wanted
    if not changes:
        return
    try:
        await retrying(lambda: js.update_stream(found.evolve(**changes)))
    except nats.js.errors.APIError as e:
        if e.err_code == _NO_ROOM:
            raise _no_room(asset, reserved, e) from e
        raise ProvisioningError(
            f"cannot update {asset.kind} {asset.name} to this router's limits: "
            f"{e.description or e}"
        ) from e
    _log.info(
        "updated %s %s: %s",
        asset.kind,
        asset.name,
        ", ".join(
            f"{name} {_shown(name, _normal(name, getattr(found, name)))} -> "
            f"{_shown(name, _normal(name, value))}"
            for name, value in changes.items()
        ),
    )
