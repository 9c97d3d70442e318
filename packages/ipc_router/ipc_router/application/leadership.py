"""Router leadership: one router at a time registers instances and routes calls.

Every router answers the admin subjects. Only the router holding the lease runs the
*routing duties*: registration, heartbeats, the health sweep and the call consumer. The
others wait and try to take the lease every second; when the leader stops, it releases the
lease and a waiting router takes over at once; when it dies, the lease expires after its TTL
and a waiting router takes over then.

A leader that cannot renew its lease steps down well before the TTL runs out, so two routers
never route at once: the new leader can only take the lease after the TTL, and the old one
has stopped consuming by then. Calls it was handling are not acked and are redelivered to
the new leader; the serving side answers any that already ran from its record.

This is an application concern: the rules for when to lead, renew and step down, driving
two ports (``Lease``, ``Duties``). How the lease is kept (a JetStream KV key,
``infrastructure/kv_lease.py``) and what the duties are made of (the composition root,
``bootstrap.py``) are decided elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ipc_router.application.errors import StoreUnavailableError
from ipc_router.application.ports import Duties, Lease

_log = logging.getLogger("ipc_router.leadership")


class Leadership:
    """Holds (or waits for) the lease and runs the routing duties while it is held.

    Args:
        lease: this router's lease.
        duties: what to run while leading.
        lease_ttl: the lease bucket's TTL in seconds.
    """

    def __init__(self, lease: Lease, duties: Duties, lease_ttl: float) -> None:
        self._lease = lease
        self._duties = duties
        self._interval = lease_ttl / 5
        self._step_down_after = lease_ttl * 0.6
        self._leading = False
        self._last_renewed = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        """Whether this router runs the routing duties now."""
        return self._leading

    async def start(self) -> None:
        """Try for the lease once now (so a lone router leads when ``start`` returns), then
        keep trying or renewing in the background. Never raises: a router that cannot lead
        yet still answers admin requests, and keeps trying.
        """
        try:
            await self._try_to_lead()
        except StoreUnavailableError as e:
            _log.warning("cannot try for the lease yet (%s); retrying every %gs", e, self._interval)
        else:
            if not self._leading:
                _log.info("another router leads; %s waits as standby", self._lease.holder)
        self._task = asyncio.create_task(self._run(), name="ipc-router-leadership")

    async def stop(self) -> None:
        """Stop the duties and give the lease up so another router takes over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._step_down("stopping")
        await self._lease.release()

    async def _run(self) -> None:
        store_down = False
        while True:
            await asyncio.sleep(self._interval)
            try:
                if self._leading:
                    await self._renew()
                else:
                    await self._try_to_lead()
                store_down = False
            except StoreUnavailableError as e:
                if not store_down:  # once per outage, not every second
                    _log.warning(
                        "cannot reach the lease (%s); retrying every %gs", e, self._interval
                    )
                store_down = True
            except Exception:  # the loop must survive anything one pass hits
                _log.exception("leadership check failed")

    async def _try_to_lead(self) -> None:
        sent = time.monotonic()
        if not await self._lease.acquire():
            return
        self._last_renewed = sent
        try:
            await self._duties.start()
        except BaseException:
            await self._duties.stop(grace=0)
            await self._lease.release()
            raise
        self._leading = True
        _log.info("%s leads: registering instances and routing calls", self._lease.holder)
        await self._renew()  # starting may have taken a while: renew, or step down now

    async def _renew(self) -> None:
        # The lease counts from when the last successful renewal was *sent*; past the
        # step-down point this router must stop, whatever JetStream says later.
        sent = time.monotonic()
        budget = self._last_renewed + self._step_down_after - sent
        renewed = False
        if budget > 0:
            try:
                renewed = await self._lease.renew(timeout=budget)
            except StoreUnavailableError as e:
                if time.monotonic() - self._last_renewed < self._step_down_after:
                    _log.warning("lease not renewed (%s); retrying", e)
                    return
        if renewed:
            self._last_renewed = sent
            return
        self._lease.forget()
        await self._step_down("lost the lease (or could not renew it in time)")

    async def _step_down(self, why: str) -> None:
        if not self._leading:
            return
        self._leading = False
        if why == "stopping":
            _log.info("%s stops routing: %s", self._lease.holder, why)
            await self._duties.stop()
        else:
            # Another router may lead in (TTL - step-down) seconds: stop at once, and leave
            # in-flight calls to redelivery rather than finish them late.
            _log.warning("%s stops routing: %s", self._lease.holder, why)
            await self._duties.stop(grace=0)
