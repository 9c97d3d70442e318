"""``FollowedTable``: a standby router's copy of the routing table, fed by the KV buckets.

Only the leading router decides roles, health and claims, and saves them in the registry
and routes buckets. A standby router watches both and keeps the latest entry of each key;
when asked for a route it (re)builds a ``RoutingTable`` from them (``RoutingTable.follow``:
as saved, nothing decided) and routes with the same policy as the leader. What the copy
cannot decide it leaves to the leader (``route`` returns None): nothing known yet, no
healthy instance, a failover under way, a new sticky assignment, a claimed resource whose
owner is gone.

The copy can be behind the leader by the time a watch takes to deliver a save (and a save
can wait while the store is down). The instances make that safe: they refuse a call routed
under an epoch older than theirs, refuse routed calls while a handover drains them, and
fence themselves when the leader stops answering; such a call is nak'ed and routed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from ipc_client_sdk.protocol import Codec, RateLimitedLog, clip, follow_buckets
from ipc_router.domain import Health, InstanceRecord, Route, RoutingError, RoutingTable
from ipc_router.infrastructure.kv_registry import record_from_wire
from ipc_router.infrastructure.kv_routes import read_route_entry

_log = logging.getLogger("ipc_router.follow")
_problems = RateLimitedLog(_log)

_RETRY = 1.0
"""Seconds before watching again after a watch failed."""


class FollowedTable:
    """The routing table as the leader last saved it.

    Args:
        registry: the registry bucket.
        routes: the routes bucket.
        codec: decodes the entries.
        heartbeat_timeout: the router's (the table's routing does not depend on it).
    """

    def __init__(
        self, registry: KeyValue, routes: KeyValue, codec: Codec, heartbeat_timeout: float
    ) -> None:
        self._buckets = (registry, routes)
        self._codec = codec
        self._heartbeat_timeout = heartbeat_timeout
        self._records: dict[str, InstanceRecord] = {}
        self._routes: dict[str, Any] = {}
        self._table = RoutingTable(heartbeat_timeout)
        self._orphans: set[tuple[str, str]] = set()
        self._dirty = False
        self._ready = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ipc-router-follow")

    async def stop(self) -> None:
        """Stop watching; the copy routes nothing until started again."""
        self._ready = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def route(self, service: str, method: str, resource_id: str | None) -> Route | None:
        """Where the leader would route the call, or None to leave the call to it."""
        if not self._ready:
            return None
        if self._dirty:
            self._rebuild()
        if resource_id is not None and (service, resource_id) in self._orphans:
            return None
        try:
            route = self._table.route(service, method, resource_id)
        except RoutingError:
            return None
        if route.new_assignment is not None:
            self._dirty = True  # the copy made an assignment the leader did not: undo it
            return None
        return route

    def alive(self, service: str, instance_id: str, session: str) -> bool:
        """Whether the instance is registered under ``session`` and healthy, as the leader
        last saved it."""
        record = self._records.get(f"{service}.{instance_id}") if self._ready else None
        return record is not None and record.session == session and record.health is Health.HEALTHY

    def _rebuild(self) -> None:
        claims: dict[tuple[str, str], list[str]] = {}
        assignments: dict[tuple[str, str], str] = {}
        for key, decoded in self._routes.items():
            with contextlib.suppress(ValueError):  # logged when it was read
                read_route_entry(key, decoded, claims, assignments)
        table = RoutingTable(self._heartbeat_timeout)
        self._orphans = table.follow(self._records.values(), claims, assignments)
        self._table, self._dirty = table, False

    # --- watching ----------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                self._records.clear()
                self._routes.clear()
                registry, routes = self._buckets
                await follow_buckets(
                    self._codec,
                    [(registry, self._on_record), (routes, self._on_route)],
                    caught_up=self._caught_up,
                    unreadable=_unreadable,
                )
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as e:
                _problems.warning("watch", "following the routing table failed: %s", clip(e))
            except Exception:  # a bug here must not stop the router: the leader routes
                _problems.exception("bug", "following the routing table failed")
            self._ready = False
            await asyncio.sleep(_RETRY)

    def _caught_up(self) -> None:
        self._ready = True

    def _on_record(self, key: str, value: Any) -> None:
        self._dirty = True
        if value is None:
            self._records.pop(key, None)
        else:
            self._records[key] = record_from_wire(value)

    def _on_route(self, key: str, value: Any) -> None:
        self._dirty = True
        if value is None:
            self._routes.pop(key, None)
        else:
            read_route_entry(key, value, {}, {})  # refuse what is not a route entry
            self._routes[key] = value


def _unreadable(key: str, error: Exception) -> None:
    _problems.warning("unreadable", "skipping unreadable entry %s: %s", clip(key), clip(error))
