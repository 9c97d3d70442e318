"""Publish/subscribe: ``client.publish(topic, event)`` and ``client.subscribe(pattern, ...)``.

Events travel on ``<prefix>.pub.<topic>`` as ``Published`` envelopes. ``publish`` stores each
one in the events stream (JetStream acks it; a publish whose ack timed out is repeated under
the same event id, so it is stored once) and every subscriber whose pattern matches gets it.

- A plain subscription is a core NATS subscription: many publishers and many subscribers,
  at most once, nothing replayed. With ``queue``, each event goes to one member of the group.
- A durable subscription (``durable="name"``) is a JetStream durable consumer on the events
  stream: it survives a subscriber restart and replays what it missed, and it is at least
  once (an event is acked after its handler returns). Subscribers sharing a durable name
  share its events. Events of one subject are handled in order: a failing handler is retried
  in place, with backoff, up to ``max_deliveries`` times, and then the event goes to the
  dead-letter subject with the error.
- An event that does not fit the subscriber's ``model`` (or cannot be read at all) goes to
  the dead-letter subject at once: it can never succeed. The subscriber goes on.

Dead letters are ``DeadLetter`` envelopes on ``<prefix>.dlq.<topic>``, kept in the dead-letter
stream for inspection.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ipc_client_sdk._calling import publish_acked
from ipc_client_sdk._codec import check_type
from ipc_client_sdk._contracts import DeadLetter, ErrorCode, ErrorInfo, Published
from ipc_client_sdk._errors import (
    CodecError,
    InvalidArgumentError,
    IPCError,
    PermissionDeniedError,
    RouterUnavailableError,
)
from ipc_client_sdk._link import Link
from ipc_client_sdk._logs import RateLimitedLog, clip
from ipc_client_sdk._nats import connection_error
from ipc_client_sdk._permissions import jetstream_api
from ipc_client_sdk._readiness import DEFAULT_READY_TIMEOUT, ReadyWait
from ipc_client_sdk._subjects import validate_call_id, validate_token, validate_topic
from ipc_client_sdk._tracing import current_trace_id, failed, handling_event, sending_event

_log = logging.getLogger("ipc_client_sdk.pubsub")
_problems = RateLimitedLog(_log)  # per event, whoever publishes them: few lines

_FETCH = 64
"""Events a durable subscription takes from JetStream at once."""

_FETCH_WAIT = 1.0
"""Seconds one fetch waits for events (a long poll)."""

_ACK_WAIT = 30.0
"""Seconds JetStream waits for a durable subscriber's ack before it redelivers (kept alive
with ``in_progress`` while the handler retries)."""

_DEAD_LETTER_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class EventContext:
    """What a subscriber's handler knows about the event it is handling.

    Attributes:
        topic: the event's topic (``md.ticks.AAPL``).
        event_id: the publisher's id for the event (the same on every delivery).
        published_at: when it was published (Unix seconds, the publisher's clock).
        publisher: the publishing client's name, if it gave one.
        sequence: its sequence number in the events stream (durable subscriptions only).
        deliveries: 1 on the first delivery; more when it is being retried or replayed.
        trace_id: the OpenTelemetry trace the event belongs to (32 hex digits), or None
            when the publisher sent no trace context and this process records no spans.
    """

    topic: str
    event_id: str
    published_at: float
    publisher: str | None
    sequence: int | None
    deliveries: int
    trace_id: str | None = None


EventHandler = Callable[..., Awaitable[None]]
"""``async def on_event(event)`` or ``async def on_event(event, ctx: EventContext)``."""


class Subscription:
    """A running subscription; ``await sub.stop()`` ends it (a durable one can be resumed
    later under the same name and replays what it missed meanwhile)."""

    def __init__(
        self,
        link: Link,
        pattern: str,
        handler: EventHandler,
        *,
        model: Any,
        queue: str | None,
        durable: str | None,
        max_deliveries: int,
        backoff: tuple[float, ...],
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        self._link = link
        self._ready_timeout = ready_timeout
        self.pattern = pattern
        self.queue = queue
        self.durable = durable
        self._handler = handler
        self._wants_context = _arity(handler) == 2
        self._model = model
        self._max_deliveries = max_deliveries
        self._backoff = backoff
        self._core: NatsSubscription | None = None
        self._pull: JetStreamContext.PullSubscription | None = None
        self._loop: asyncio.Task[None] | None = None
        self._lanes: dict[str, _Lane] = {}
        self._room = asyncio.Semaphore(_FETCH * 2)  # events fetched and not yet done
        self._stopping = False
        self._stopped = False
        self._pulled_all = asyncio.Event()  # stopping: no fetch can bring events any more
        self.name = durable or f"{link.name or 'client'}/{pattern}"

    @property
    def active(self) -> bool:
        """True until ``stop()``."""
        return not self._stopped

    async def start(self) -> None:
        """Subscribe; the subscription is live when this returns. A durable one waits
        (``ready_timeout`` seconds at most) for a router to set up the events stream.

        Raises:
            RouterUnavailableError: durable, and no router has set up the events stream
                within ``ready_timeout``.
            InvalidArgumentError: durable, and the name belongs to a subscription to another
                pattern.
            IPCConnectionError: the connection failed.
        """
        nc = self._link.nats
        subject = self._link.subjects.topic_pattern(self.pattern)
        try:
            if self.durable is None:
                self._core = await nc.subscribe(
                    subject, queue=self.queue or "", cb=self._on_core, pending_msgs_limit=100_000
                )
                # The server has the subscription (no event is missed after), or refused it.
                await self._confirm(subject)
                return
            stream = self._link.subjects.events_stream
            permissions = self._link.permissions
            self._pull = await ReadyWait(self._ready_timeout, f"durable {self.durable!r}").retry(
                lambda: permissions.run(
                    nc.jetstream().pull_subscribe(
                        subject,
                        durable=self.durable,
                        stream=stream,
                        config=ConsumerConfig(
                            ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL,
                            ack_wait=_ACK_WAIT,
                            max_deliver=-1,
                            max_ack_pending=10_000,
                        ),
                    ),
                    jetstream_api(stream),
                ),
                waiting_for=f"the events stream {stream}",
                missing=lambda e: isinstance(e, nats.js.errors.NotFoundError),
            )
            # nats-py binds to an existing consumer as it is: a durable name created for
            # another pattern would hand this subscriber someone else's events.
            found = (
                await permissions.run(self._pull.consumer_info(), jetstream_api(stream))
            ).config
        except nats.js.errors.NotFoundError as e:
            raise RouterUnavailableError(
                f"the events stream {self._link.subjects.events_stream} does not exist after "
                f"{self._ready_timeout:g}s: start ipc-router on this NATS first"
            ) from e
        except nats.js.errors.APIError as e:
            raise InvalidArgumentError(
                f"durable subscription {self.durable!r} cannot follow {self.pattern!r}: "
                f"{e.description or e}"
            ) from e
        except nats.errors.Error as e:
            raise connection_error(self._link.servers, e) from e
        if found.filter_subject != subject or found.ack_policy != AckPolicy.EXPLICIT:
            with contextlib.suppress(nats.errors.Error):
                await self._pull.unsubscribe()
            taken = self._link.subjects.topic_of(found.filter_subject or "")
            raise InvalidArgumentError(
                f"durable name {self.durable!r} already follows {taken!r}, not "
                f"{self.pattern!r}: use another name (a durable name keeps its pattern)"
            )
        self._loop = asyncio.create_task(self._fetch_loop(), name=f"ipc-durable-{self.durable}")

    async def _confirm(self, subject: str) -> None:
        """Wait for the server to take the core subscription; drop it if it was refused.

        Raises:
            PermissionDeniedError: this identity may not subscribe to ``subject``.
        """
        try:
            await self._link.permissions.confirm(self._link.nats, [subject])
        except PermissionDeniedError:
            core, self._core = self._core, None
            if core is not None:
                with contextlib.suppress(nats.errors.Error):
                    await core.unsubscribe()
            raise

    async def stop(self, *, timeout: float = 5.0) -> None:
        """Stop taking events. A handler still running gets ``timeout`` seconds to finish;
        events delivered to a plain subscription but not handled yet are handled within it,
        and a durable subscription's unhandled events are given back (redelivered, in
        order, to the next subscriber under its name). Idempotent; safe from a handler.

        A durable subscription's consumer stays in JetStream: subscribing again under the
        same name resumes after the last event acked.
        """
        if self._stopped:
            return
        self._stopped = self._stopping = True
        if self._core is not None:
            core, self._core = self._core, None
            try:
                drained = core.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py
                await asyncio.wait_for(drained, timeout)
            except (TimeoutError, nats.errors.Error):
                with contextlib.suppress(nats.errors.Error):
                    await core.unsubscribe()
            return
        if self._loop is not None:
            # Not cancelled: a fetch cut short would leave what the server already sent it
            # unacked for ack_wait. Its long poll ends within a second; what it brings back
            # now is given back.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._loop), _FETCH_WAIT + 1.0)
        if self._pull is not None:
            # Before anything is given back: an event given back while a fetch of ours is
            # still waiting would be redelivered into it and given back again, after the
            # events behind it, out of order.
            with contextlib.suppress(nats.errors.Error):
                await self._pull.unsubscribe()
        self._pulled_all.set()
        for lane in self._lanes.values():
            lane.queue.put_nowait(None)  # the end: what is queued before it is given back
        current = asyncio.current_task()
        lanes = [lane.task for lane in self._lanes.values() if lane.task is not current]
        if lanes:  # (a handler calling stop() ends its own lane when it returns)
            _, late = await asyncio.wait(lanes, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # --- plain subscriptions -------------------------------------------------------------
    async def _on_core(self, msg: Msg) -> None:
        read = self._read(msg)
        if isinstance(read, tuple) and isinstance(read[1], _Unfit):
            await self._dead_letter(read[0], read[1].error, 1)
            return
        published, value = read
        error = await self._invoke(published, value, sequence=None, deliveries=1, msg=msg)
        if error is not None:
            await self._dead_letter(published, error, 1)

    # --- durable subscriptions -----------------------------------------------------------
    async def _fetch_loop(self) -> None:
        """Fetch events and hand each to its subject's lane; lanes run side by side, the
        events of one subject one after another."""
        assert self._pull is not None
        while not self._stopping:
            try:
                msgs = await self._pull.fetch(batch=_FETCH, timeout=_FETCH_WAIT)
            except TimeoutError:
                continue
            except nats.errors.Error as e:
                if self._stopping:
                    return
                _log.warning("durable %s: fetching failed (%s); retrying", self.durable, e)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                # Stopping: still queue it in its lane, behind that subject's earlier events,
                # so that the lane gives all of them back in order.
                if not self._stopping:
                    await self._room.acquire()  # back-pressure: at most 2 batches in lanes
                lane = self._lanes.get(msg.subject)
                if lane is None or lane.task.done():
                    lane = self._lanes[msg.subject] = _Lane(
                        asyncio.create_task(self._run_lane(msg.subject))
                    )
                lane.queue.put_nowait(msg)

    async def _run_lane(self, subject: str) -> None:
        lane = self._lanes[subject]
        while True:
            msg = await lane.queue.get()
            if msg is None:
                return  # stopped
            try:
                if self._stopping:
                    await self._give_back(msg)  # redelivered, in order, to the next subscriber
                    continue
                await self._one_durable(msg)
            except asyncio.CancelledError:
                # Cancelled by stop() (after its pulls ended) or by the loop shutting down:
                # give back at once, never wait here.
                await self._give_back(msg, wait=False)
                while not lane.queue.empty():
                    if (queued := lane.queue.get_nowait()) is not None:
                        await self._give_back(queued, wait=False)
                raise
            except nats.errors.Error as e:
                # Not acked: JetStream delivers it again after ack_wait.
                _log.warning("durable %s: event left for redelivery (%s)", self.durable, e)
            finally:
                self._room.release()

    async def _one_durable(self, msg: Msg) -> None:
        first = msg.metadata.num_delivered
        sequence = msg.metadata.sequence.stream
        read = self._read(msg)
        if isinstance(read[1], _Unfit):
            await self._dead_letter_until_stored(msg, read[0], read[1].error, first)
            return
        published, value = read
        if first > self._max_deliveries:
            # Delivered this often already: its handler crashed the process each time.
            poison = ErrorInfo(
                code=ErrorCode.ABORTED,
                message=f"delivered {first} times without being acknowledged (the subscriber "
                "died while handling it?)",
            )
            await self._dead_letter_until_stored(msg, published, poison, first)
            return
        deliveries = first
        while True:
            async with _keep_alive(msg):
                error = await self._invoke(
                    published, value, sequence=sequence, deliveries=deliveries, msg=msg
                )
            if error is None:
                await msg.ack()
                return
            if deliveries >= self._max_deliveries:
                break
            if self._stopping:
                await self._give_back(msg)
                return
            async with _keep_alive(msg):
                await asyncio.sleep(self._backoff[min(deliveries, len(self._backoff)) - 1])
            deliveries += 1
        await self._dead_letter_until_stored(msg, published, error, deliveries)

    async def _give_back(self, msg: Msg, *, wait: bool = True) -> None:
        """Leave an event for redelivery now (not after ack_wait), once no fetch of ours can
        be waiting any more (``wait``): one still waiting would get it back, behind later
        events."""
        if wait:
            await self._pulled_all.wait()
        with contextlib.suppress(nats.errors.Error):
            await msg.nak()

    async def _dead_letter_until_stored(
        self, msg: Msg, event: Published, error: ErrorInfo, deliveries: int
    ) -> None:
        """Dead-letter, then ack. While the dead letter cannot be stored, the subject waits
        (later events of it must not overtake this one); when stopping, the event is given
        back instead."""
        delay = 1.0
        while not await self._dead_letter(event, error, deliveries):
            if self._stopping:
                await self._give_back(msg)
                return
            async with _keep_alive(msg):
                await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        await msg.ack()

    # --- shared ----------------------------------------------------------------------------
    def _read(self, msg: Msg) -> tuple[Published, Any]:
        """The event and its value, or the event (a stand-in when unreadable) and why it
        does not fit (an ``_Unfit`` as the value)."""
        codec = self._link.codec
        try:
            published = codec.decode_envelope(msg.data, Published)
        except CodecError as e:
            self._link.metrics.event_handled("unfit")
            unreadable = _unreadable(msg, self._link)
            return unreadable, _Unfit(ErrorInfo(code=e.code, message=e.message))
        try:
            return published, codec.decode(published.payload, self._model)
        except CodecError as e:
            self._link.metrics.event_handled("unfit")
            return published, _Unfit(ErrorInfo(code=e.code, message=e.message))

    async def _invoke(
        self, published: Published, value: Any, *, sequence: int | None, deliveries: int, msg: Msg
    ) -> ErrorInfo | None:
        """Run the handler once, in a span continuing the publisher's trace (carried in
        ``msg``'s headers); the error it raised, or None."""
        with handling_event(
            msg.headers, published.topic, msg.subject, published.event_id, self.name, deliveries
        ):
            error = await self._run_handler(published, value, sequence, deliveries)
            if error is not None:
                failed(code=error.code.value, message=error.message)
            return error

    async def _run_handler(
        self, published: Published, value: Any, sequence: int | None, deliveries: int
    ) -> ErrorInfo | None:
        try:
            if self._wants_context:
                ctx = EventContext(
                    topic=published.topic,
                    event_id=published.event_id,
                    published_at=published.published_at,
                    publisher=published.publisher,
                    sequence=sequence,
                    deliveries=deliveries,
                    trace_id=current_trace_id(),
                )
                await self._handler(value, ctx)
            else:
                await self._handler(value)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            self._link.metrics.event_handled("error")
            return ErrorInfo(code=ErrorCode.CANCELLED, message="the handler was cancelled")
        except IPCError as e:
            self._link.metrics.event_handled("error")
            return e.to_info()
        except Exception as e:
            self._link.metrics.event_handled("error")
            failed(e)
            _problems.exception(
                f"handler {self.name}",
                "subscriber %s failed on event %s",
                self.name,
                clip(published.event_id),
            )
            return ErrorInfo(code=ErrorCode.INTERNAL, message=f"{type(e).__name__}: {e}"[:500])
        self._link.metrics.event_handled("ok")
        return None

    async def _dead_letter(self, event: Published, error: ErrorInfo, deliveries: int) -> bool:
        """Publish the event to the dead-letter subject; whether JetStream stored it."""
        link = self._link
        letter = DeadLetter(
            event=event,
            error=error,
            subscriber=self.name,
            deliveries=deliveries,
            failed_at=time.time(),
        )
        _problems.warning(
            f"dead-letter {self.name}",
            "event %s on %s dead-lettered by %s after %d deliveries: %s",
            clip(event.event_id),
            clip(event.topic),
            self.name,
            deliveries,
            clip(error.message),
        )
        try:
            subject = link.subjects.dead_letter(event.topic)
        except ValueError:
            subject = link.subjects.dead_letter("unreadable")
        try:
            await publish_acked(
                link,
                subject,
                link.codec.encode_envelope(letter),
                msg_id=f"dlq-{event.event_id}-{os.urandom(4).hex()}",
                deadline=time.time() + _DEAD_LETTER_TIMEOUT,
                what="the dead letter",
            )
        except IPCError as e:
            _problems.error(
                f"dead-letter-lost {self.name}",
                "dead letter for event %s not stored: %s",
                clip(event.event_id),
                clip(e),
            )
            return False
        link.metrics.dead_lettered()
        return True


async def publish(
    link: Link, topic: str, payload: Any, *, event_id: str | None, timeout: float | None
) -> int:
    """See ``IPCClient.publish``."""
    try:
        validate_topic(topic)
        event_id = validate_call_id(event_id) if event_id is not None else os.urandom(12).hex()
    except ValueError as e:
        raise InvalidArgumentError(str(e)) from e
    timeout = link.request_timeout if timeout is None else timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidArgumentError(f"timeout must be a positive number, got {timeout!r}")
    codec = link.codec
    event = Published(
        topic=topic,
        payload=codec.encode(payload),
        event_id=event_id,
        published_at=time.time(),
        publisher=link.name,
    )
    subject = link.subjects.topic(topic)
    with sending_event(topic, subject, event_id) as traced:
        ack = await publish_acked(
            link,
            subject,
            codec.encode_envelope(event),
            msg_id=event_id,
            deadline=time.time() + timeout,
            what=f"the event on {topic}",
            headers=traced.headers if traced is not None else None,
        )
    link.metrics.event_published()
    return ack.seq


def check_subscribe_arguments(
    pattern: str,
    handler: object,
    model: Any,
    queue: str | None,
    durable: str | None,
    max_deliveries: int,
) -> None:
    """Refuse bad ``subscribe`` arguments before anything is sent.

    Raises:
        InvalidArgumentError: the first bad argument, named.
    """
    try:
        validate_topic(pattern, wildcards=True)
        if queue is not None:
            validate_token(queue, "queue")
        if durable is not None:
            validate_token(durable, "durable")
        if model is not None:
            check_type(model)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(str(e)) from e
    if not inspect.iscoroutinefunction(handler):
        raise InvalidArgumentError("the handler must be an 'async def' function")
    if _arity(handler) not in (1, 2):
        raise InvalidArgumentError("the handler must take (event) or (event, ctx)")
    if durable is not None and queue is not None:
        raise InvalidArgumentError(
            "a durable subscription is shared by every subscriber that uses its name; "
            "queue is for plain subscriptions"
        )
    if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int):
        raise InvalidArgumentError(f"max_deliveries must be a whole number, got {max_deliveries!r}")
    if not 1 <= max_deliveries <= 1000:
        raise InvalidArgumentError(f"max_deliveries must be 1 to 1000, got {max_deliveries}")


def _arity(handler: object) -> int:
    try:
        params = inspect.signature(handler).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1
    return sum(
        1
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


@dataclass(frozen=True, slots=True)
class _Unfit:
    """Why an event cannot be handled at all (it does not fit the model, or cannot be read)."""

    error: ErrorInfo


class _Lane:
    """The events of one subject, handled one after another."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task
        self.queue: asyncio.Queue[Msg | None] = asyncio.Queue()  # None: the end


@contextlib.asynccontextmanager
async def _keep_alive(msg: Msg) -> AsyncIterator[None]:
    """Tell JetStream the event is still being worked on, so a long handler or backoff is
    not mistaken for a dead subscriber (and the event redelivered to another)."""

    async def ping() -> None:
        while True:
            await asyncio.sleep(_ACK_WAIT / 3)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    pinger = asyncio.create_task(ping())
    try:
        yield
    finally:
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger


def _unreadable(msg: Msg, link: Link) -> Published:
    """A stand-in for an event that could not be read, carrying its raw bytes."""
    topic = link.subjects.topic_of(msg.subject)
    return Published(topic=topic, payload=msg.data, event_id="unreadable", published_at=0.0)
