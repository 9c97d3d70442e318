"""Announcing changes over NATS: router events, and state notices to the instances concerned.

The registry emits events without waiting (it must not block on I/O while it changes the
table); ``EventPublisher`` queues them and a task publishes them in order:

- every event on ``<prefix>.events.<kind>`` (``role``, ``health``, ``registry``) as a
  ``RouterEvent``, for ``ipc watch`` and any other observer (core NATS: an observer that is
  not subscribed misses it);
- for a role change, the instance's new ``InstanceState`` on its control subject, so it
  learns at once rather than from the answer to its next heartbeat.

``EventPublisher`` satisfies the ``EventSink`` port and ``NatsInstanceNotifier`` the
``InstanceNotifier`` port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NATS

from ipc_client_sdk.protocol import (
    AdminReply,
    Codec,
    InstanceState,
    RateLimitedLog,
    RouterEvent,
    Subjects,
    clip,
)
from ipc_router.domain import InstanceEvent, InstanceRecord, RoleEvent

_log = logging.getLogger("ipc_router.events")

_MAX_QUEUED = 100_000
"""Events kept while the connection is slow; past this the oldest are dropped (logged)."""

StateOf = Callable[[str, str], tuple[InstanceRecord, tuple[str, ...]] | None]
"""(service, instance_id) -> its record and owned resources, or None when it is gone."""


class EventPublisher:
    """An ``EventSink`` that publishes on NATS from a background task.

    Args:
        nc: the router's connection.
        subjects: the subject map.
        codec: the envelope codec.
        state_of: reads an instance's current state when its notice is sent.
        notifier: sends an instance its notice.
    """

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        codec: Codec,
        state_of: StateOf,
        notifier: NatsInstanceNotifier,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._codec = codec
        self._state_of = state_of
        self._notifier = notifier
        self._queue: asyncio.Queue[RoleEvent | InstanceEvent] = asyncio.Queue(_MAX_QUEUED)
        self._task: asyncio.Task[None] | None = None
        self._problems = RateLimitedLog(_log)  # a registration flood: few lines

    def emit(self, event: RoleEvent | InstanceEvent) -> None:
        """Queue ``event``; never blocks."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._problems.warning("queue-full", "event queue full; dropping %s", clip(event))

    def start(self) -> None:
        """Start publishing."""
        self._task = asyncio.create_task(self._run(), name="ipc-router-events")

    async def stop(self) -> None:
        """Publish what is queued (briefly), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), 1.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._publish(event)
            except nats.errors.Error as e:
                self._problems.log(
                    logging.DEBUG, "not-published", "event not published (%s): %s", e, clip(event)
                )
            except Exception:  # one bad event must not stop the others
                self._problems.exception("failed", "publishing %s failed", clip(event))
            finally:
                self._queue.task_done()

    async def _publish(self, event: RoleEvent | InstanceEvent) -> None:
        codec, subjects = self._codec, self._subjects
        if isinstance(event, RoleEvent):
            wire = RouterEvent(
                kind="role",
                service=event.service,
                instance_id=event.instance_id,
                at=time.time(),
                role=event.role.value,
                epoch=event.epoch,
                resource=event.resource,
                reason=event.reason,
            )
            await self._notify(event.service, event.instance_id)
        else:
            wire = RouterEvent(
                kind=event.kind,
                service=event.service,
                instance_id=event.instance_id,
                at=time.time(),
                state=event.state,
            )
        await self._nc.publish(subjects.events(wire.kind), codec.encode_envelope(wire))

    async def _notify(self, service: str, instance_id: str) -> None:
        found = self._state_of(service, instance_id)
        if found is None or not found[0].session:
            return
        record, owned = found
        await self._notifier.tell(record, owned)


class NatsInstanceNotifier:
    """An ``InstanceNotifier`` that publishes on the instance's control subject.

    Args:
        nc: the router's connection.
        subjects: the subject map.
        codec: the envelope codec.
        lease: the lease, in seconds, granted with each notice.
    """

    def __init__(self, nc: NATS, subjects: Subjects, codec: Codec, lease: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._codec = codec
        self.lease = lease

    async def tell(self, record: InstanceRecord, owned: tuple[str, ...] | None) -> None:
        """Push an instance its state (roles, epoch, draining) on its control subject; an
        instance that misses it is put right by its next heartbeat's answer. Never raises."""
        if not record.session:
            return
        state = instance_state(record, owned, lease=self.lease)
        subject = self._subjects.instance_control(
            record.service, record.instance_id, record.session
        )
        reply = AdminReply(ok=True, result=state.model_dump())
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(subject, self._codec.encode_envelope(reply))


def instance_state(
    record: InstanceRecord,
    owned: tuple[str, ...] | None,
    *,
    lease: float,
    seq: int | None = None,
) -> InstanceState:
    """What an instance is told about itself (``owned`` None: unchanged, not sent)."""
    return InstanceState(
        role=record.role.value,
        epoch=record.epoch,
        owned=list(owned) if owned is not None else None,
        seq=seq,
        lease=lease,
        draining=record.draining,
    )
