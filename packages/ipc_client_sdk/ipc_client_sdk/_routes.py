"""``RouteCache``: the caller's copy of the router's routing table, for direct calls.

The leading router saves its routing table in two KV buckets: every instance's record
(role, epoch, health, session, draining, methods) in the registry bucket, and every claimed
resource's claimants (owner first) and every sticky assignment in the routes bucket. The
cache watches both and answers, for ``(service, method, resource_id)``, the instance the
router would route to and the epoch it holds, so a direct call can go straight there.

It can be behind the router (a watch delivers a change a moment after it is saved; a save
can wait while the store is down). That is safe because the instance decides: it refuses
a direct call unless the call's epoch is its own epoch, it holds the role the call needs,
its lease is valid, and no handover is under way. A refused call goes through the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, replace
from typing import Any

import nats.errors
import nats.js.errors

from ipc_client_sdk._kv import follow_buckets
from ipc_client_sdk._link import Link

_log = logging.getLogger("ipc_client_sdk.routes")

_CLAIM = "claim."
_ASSIGN = "assign."


@dataclass(frozen=True, slots=True)
class Target:
    """Where a direct call goes: an instance's inbox, and the epoch it must hold.

    ``inbox``: the instance's direct subject, made once when its record was read (None
    when its tokens cannot make one: the subject map says why when asked).
    """

    service: str
    instance_id: str
    session: str
    epoch: int
    inbox: str | None = None


@dataclass(frozen=True, slots=True)
class _Instance:
    instance_id: str
    role: str
    healthy: bool
    draining: bool
    epoch: int
    session: str
    methods: frozenset[str]
    direct: frozenset[str]
    load_balanced: bool
    registered_at: float
    takes_direct: bool
    inbox: str | None = None

    def serves(self, method: str) -> bool:
        return (
            self.takes_direct
            and self.healthy
            and not self.draining
            and bool(self.session)
            and method in self.methods
        )


def _skip(key: str, error: Exception) -> None:
    _log.debug("routing cache skips entry %s: %s", key, error)


def _instance(data: Any) -> _Instance:
    """A registry entry as the cache keeps it.

    Raises:
        KeyError, TypeError, ValueError: not a registry record.
    """
    return _Instance(
        instance_id=str(data["instance_id"]),
        role=str(data["role"]),
        healthy=data["health"] == "healthy",
        draining=bool(data.get("draining", False)),
        epoch=int(data["epoch"]),
        session=str(data.get("session", "")),
        methods=frozenset(str(m) for m in data.get("methods", ())),
        direct=frozenset(str(m) for m in data.get("direct_methods", ())),
        load_balanced=bool(data.get("load_balanced", False)),
        registered_at=float(data.get("registered_at", 0.0)),
        takes_direct=bool(data.get("direct", False)),
    )


class RouteCache:
    """Watches the router's routing table; started by the client's first call."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._services: dict[str, dict[str, _Instance]] = {}
        self._owners: dict[tuple[str, str], str] = {}
        self._assigned: dict[tuple[str, str], str] = {}
        self._turn = itertools.count()
        self._ready = asyncio.Event()
        self._settled = asyncio.Event()  # the first load succeeded or failed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (idempotent). Never raises."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ipc-route-cache")

    async def ready(self, timeout: float) -> bool:
        """Whether the cache has read both buckets; the first time, wait for its first load
        to succeed or fail (``timeout`` seconds at most)."""
        self.start()
        if not self._settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), timeout)
        return self._ready.is_set()

    @property
    def is_ready(self) -> bool:
        """Whether the cache has read both buckets."""
        return self._ready.is_set()

    async def close(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def direct_by_default(self, service: str, method: str) -> bool:
        """Whether the service declared ``method`` with ``durable=False``."""
        instances = self._services.get(service) or {}
        return any(method in i.direct for i in instances.values())

    def lookup(self, service: str, method: str, resource_id: str | None) -> Target | None:
        """The instance the router would route this call to, or None when the cache
        cannot tell (nothing known, no healthy holder, a new assignment to make)."""
        instances = self._services.get(service)
        if not instances:
            return None
        chosen: _Instance | None
        if resource_id is not None and (service, resource_id) in self._owners:
            chosen = instances.get(self._owners[(service, resource_id)])
        elif not any(i.load_balanced for i in instances.values()):
            chosen = next((i for i in instances.values() if i.role == "active"), None)
        elif resource_id is not None:
            assigned = self._assigned.get((service, resource_id))
            chosen = instances.get(assigned) if assigned is not None else None
        else:
            ready = sorted(
                (i for i in instances.values() if i.serves(method)),
                key=lambda i: i.registered_at,
            )
            chosen = ready[next(self._turn) % len(ready)] if ready else None
        if chosen is None or not chosen.serves(method):
            return None
        return Target(service, chosen.instance_id, chosen.session, chosen.epoch, chosen.inbox)

    # --- watching ----------------------------------------------------------------------
    async def _run(self) -> None:
        subjects = self._link.subjects
        while True:
            try:
                js = self._link.nats.jetstream()
                registry = await js.key_value(subjects.registry_bucket)
                routes = await js.key_value(subjects.routes_bucket)
                # Start from nothing: what was deleted while no watch ran must not linger.
                self._services.clear()
                self._owners.clear()
                self._assigned.clear()
                await follow_buckets(
                    self._link.codec,
                    [(registry, self._on_instance), (routes, self._on_route)],
                    caught_up=self._caught_up,
                    unreadable=_skip,
                )
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as e:
                _log.debug("routing cache: %s; direct calls go through the router", e)
            except Exception:  # a bug here must not take calls down: they use the router
                _log.exception("routing cache failed; direct calls go through the router")
            self._ready.clear()
            self._settled.set()
            await asyncio.sleep(1.0)

    def _caught_up(self) -> None:
        """Both watches have read their whole bucket: the cache is ready."""
        self._ready.set()
        self._settled.set()

    def _on_instance(self, key: str, value: Any) -> None:
        service, _, instance_id = key.partition(".")
        if value is None:
            self._services.get(service, {}).pop(instance_id, None)
            return
        found = _instance(value)
        try:
            inbox = self._link.subjects.instance_direct(service, found.instance_id, found.session)
        except ValueError:
            inbox = None
        self._services.setdefault(service, {})[instance_id] = replace(found, inbox=inbox)

    def _on_route(self, key: str, value: Any) -> None:
        if key.startswith(_CLAIM):
            table, rest = self._owners, key[len(_CLAIM) :]
            holder = str(value[0]) if isinstance(value, list) and value else None
        elif key.startswith(_ASSIGN):
            table, rest = self._assigned, key[len(_ASSIGN) :]
            holder = value if isinstance(value, str) else None
        else:
            return
        service, _, resource = rest.partition(".")
        if holder is None:
            table.pop((service, resource), None)
        else:
            table[(service, resource)] = holder
