"""``JetStreamProbe``: what the health probes and the metrics ask JetStream about the
router's own assets (whether they exist, the calls stream's backlog)."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from ipc_client_sdk.protocol import Subjects
from ipc_router.application.ports import CallsBacklog

_WAIT = 1.0
"""Seconds one question to JetStream may take."""


class JetStreamProbe:
    """Asks JetStream about the router's streams and buckets; never raises.

    Args:
        js: the router's JetStream context.
        subjects: the subject map (the asset names).
    """

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects
        s = subjects
        self._streams = (
            s.calls_stream,
            s.events_stream,
            s.dead_letter_stream,
            *(
                f"KV_{bucket}"
                for bucket in (
                    s.registry_bucket,
                    s.contracts_bucket,
                    s.routes_bucket,
                    s.leases_bucket,
                    s.results_bucket,
                )
            ),
        )

    async def missing(self) -> str | None:
        """Why the assets cannot be used (one line), or None when every stream and bucket
        exists."""
        found = await asyncio.gather(*(self._exists(name) for name in self._streams))
        if any(answer is None for answer in found):
            return "JetStream does not answer"
        absent = [name for name, exists in zip(self._streams, found, strict=True) if not exists]
        return f"JetStream assets missing: {', '.join(absent)}" if absent else None

    async def _exists(self, stream: str) -> bool | None:
        try:
            await asyncio.wait_for(self._js.stream_info(stream), _WAIT)
        except nats.js.errors.NotFoundError:
            return False
        except (nats.errors.Error, TimeoutError):
            return None
        return True

    async def calls_backlog(self) -> CallsBacklog | None:
        """The calls consumer's pending and unacked counts; with no consumer yet (no router
        has led), every stored call is pending. None when JetStream does not answer."""
        stream, durable = self._subjects.calls_stream, self._subjects.calls_consumer
        try:
            info = await self._js.consumer_info(stream, durable, timeout=_WAIT)
        except nats.js.errors.NotFoundError:
            try:
                stream_info = await asyncio.wait_for(self._js.stream_info(stream), _WAIT)
            except (nats.errors.Error, TimeoutError):
                return None
            return CallsBacklog(pending=stream_info.state.messages, unacked=0)
        except nats.errors.Error:
            return None
        return CallsBacklog(pending=info.num_pending or 0, unacked=info.num_ack_pending or 0)
