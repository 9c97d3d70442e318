"""Router leadership: one router at a time registers instances and routes calls.

Every router answers the admin subjects. Only the router holding the lease runs the
*routing duties*: registration, heartbeats, the health sweep and the call consumer. The
others wait as standbys and try for the lease every tenth of its TTL. When the leader
stops, it releases the lease and a standby takes it at its next try; when it dies, the
lease expires one TTL after its last renewal and a standby takes it then.

**Why two routers never lead at once.** Let ``T`` be the lease's TTL (the bucket's, as
JetStream enforces it; 1.25 s by default). JetStream removes the key ``T`` after it *stored*
the last renewal, and it stores a renewal only after the leader *sent* it; so no other
router can take the lease before ``sent + T``. The leader counts its term from that same
send: it renews every ``T/10``, and its term ends ``0.8 T`` after the send of its last
successful renewal (``in_term``), so it rides out a stall of ``0.7 T`` (its event loop
busy, a slow JetStream) without stepping down. From then on it routes nothing (the call path, the
heartbeat answers and the registry's upkeep ask ``in_term`` before they act) and steps
down, ``0.2 T`` before anyone else can lead. Both sides measure on monotonic clocks, so
a step of the system clock changes nothing. A leader frozen past its term (SIGSTOP, swap)
finds its term over when it wakes, and steps down without routing what waited in its
socket. What this argument cannot cover is a process frozen *between* checking its term
and acting; for calls, the serving side's claim in the results bucket makes a second
delivery harmless (the repeat is answered from the record, never run again).

**Take-over after a kill -9.** The lease expires ``T`` (plus up to about 0.3 s of
nats-server's expiry sweep) after the dead leader's last renewal; a standby takes it
within ``T/10``, restores the routing table and starts the call consumer. Calls nobody
had taken are delivered to it at once; calls the dead leader held come back after the
consumer's ``ack_wait`` (``--call-ack-wait``, 1 s by default) from when it took them
(or last kept them alive), by when the new leader is pulling. With the defaults a call
waits under 2 s, well inside the SDK's default 5 s timeout.

Calls a leader was handling when it stepped down are not acked and are redelivered to
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

RENEW_EVERY = 0.1
"""The leader renews every ``RENEW_EVERY * TTL`` seconds."""

TRY_EVERY = 0.1
"""A standby tries for the lease every ``TRY_EVERY * TTL`` seconds."""

TERM = 0.8
"""A leader's term ends ``TERM * TTL`` after the send of its last successful renewal:
strictly before the lease can expire (``TTL`` after that send at the earliest)."""


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
        self._renew_every = lease_ttl * RENEW_EVERY
        self._try_every = lease_ttl * TRY_EVERY
        self._term = lease_ttl * TERM
        self._leading = False
        self._term_ends = 0.0  # monotonic; 0 while no lease is held
        self._task: asyncio.Task[None] | None = None
        self._store_down = False

    @property
    def leading(self) -> bool:
        """Whether this router runs the routing duties now."""
        return self._leading

    @property
    def lease_reachable(self) -> bool:
        """Whether the last try for (or renewal of) the lease reached the store: a standby
        that cannot reach it could not take over."""
        return not self._store_down

    def in_term(self) -> bool:
        """Whether this router may act as the leader right now: it holds the lease and its
        term (counted from its last successful renewal's send) has not ended. The duties
        ask this before each routing action, so a leader that wakes from a freeze acts on
        nothing before it steps down."""
        return time.monotonic() < self._term_ends

    async def start(self) -> None:
        """Try for the lease once now (so a lone router leads when ``start`` returns), then
        keep trying or renewing in the background. Never raises: a router that cannot lead
        yet still answers admin requests, and keeps trying.
        """
        try:
            await self._try_to_lead()
        except StoreUnavailableError as e:
            self._store_down = True
            _log.warning(
                "cannot try for the lease yet (%s); retrying every %gs", e, self._try_every
            )
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
        while True:
            await asyncio.sleep(self._renew_every if self._leading else self._try_every)
            try:
                if self._leading:
                    await self._renew()
                else:
                    await self._try_to_lead()
                self._store_down = False
            except StoreUnavailableError as e:
                if not self._store_down:  # once per outage, not every try
                    _log.warning("cannot reach the lease (%s); retrying", e)
                self._store_down = True
            except Exception:  # the loop must survive anything one pass hits
                _log.exception("leadership check failed")

    async def _try_to_lead(self) -> None:
        sent = time.monotonic()
        if not await self._lease.acquire():
            return
        self._term_ends = sent + self._term
        try:
            await self._duties.start()
        except BaseException:
            self._term_ends = 0.0
            await self._duties.stop(grace=0)
            await self._lease.release()
            raise
        self._leading = True
        _log.info("%s leads: registering instances and routing calls", self._lease.holder)
        await self._renew()  # starting may have taken a while: renew, or step down now

    async def _renew(self) -> None:
        # The term counts from when the last successful renewal was *sent*; past its end
        # this router must stop, whatever JetStream says later.
        sent = time.monotonic()
        budget = self._term_ends - sent
        renewed = False
        if budget > 0:
            try:
                renewed = await self._lease.renew(timeout=budget)
            except StoreUnavailableError as e:
                if self.in_term():
                    _log.warning("lease not renewed (%s); retrying", e)
                    return
        if renewed:
            self._term_ends = sent + self._term
            return
        self._lease.forget()
        await self._step_down("lost the lease (or could not renew it in time)")

    async def _step_down(self, why: str) -> None:
        if not self._leading:
            self._term_ends = 0.0
            return
        self._leading = False
        if why == "stopping":
            # The lease is still held: the calls in flight may finish within the grace.
            _log.info("%s stops routing: %s", self._lease.holder, why)
            await self._duties.stop()
            self._term_ends = 0.0
        else:
            self._term_ends = 0.0
            # Another router may lead once the lease expires: stop at once, and leave
            # in-flight calls to redelivery rather than finish them late.
            _log.warning("%s stops routing: %s", self._lease.holder, why)
            await self._duties.stop(grace=0)
