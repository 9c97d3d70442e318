"""``ResultLedger``: at most one run per caller and call_id, across every instance of a
service.

Before a handler runs, its instance *claims* the call in the results bucket (the key
``<service>.<method>.<caller>.<call_id>``, the caller read by the router off the call's
subject, which NATS lets an identity publish on as itself only) with KV
``create``, which is atomic: of two deliveries of one call (a caller's retry, a redelivery
after a router crash, on this instance or another), exactly one claim succeeds. The winner
runs the handler and replaces its claim with the reply (``update`` against the claim's
revision). A delivery that finds a claim waits for the reply to be recorded and answers
with it; if the caller's deadline comes first it answers ``DEADLINE_EXCEEDED`` and says
that the call is running elsewhere (or that its instance died before recording an outcome)
and was not run again.

An outcome the caller may retry (the handler raised a retryable ``IPCError``, or the
request did not validate) releases the claim instead, so a retry runs afresh.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from ipc_client_sdk._contracts import ErrorCode
from ipc_client_sdk._errors import IPCError
from ipc_client_sdk._replies import (
    STORE_FULL_DETAIL,
    ReplyInbox,
    store_is_full,
    stream_publish,
)

_TIMEOUT = 2.0
"""Seconds one read or write of the results bucket may take."""


async def open_results(js: JetStreamContext, bucket: str, service: str) -> KeyValue:
    """The results bucket, opened for ``service`` without asking for the stream's info.

    A service may not ask for it: with a subjects filter, stream info lists every key of
    every service. A direct get of a key of the service's that is never written tells
    whether the bucket is there instead (not found: it is).

    Raises:
        nats.js.errors.BucketNotFoundError: the bucket does not exist (yet).
        nats.errors.Error: JetStream did not answer.
    """
    kv = KeyValue(name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=js, direct=True)
    try:
        await kv.get(f"{service}._ready")
    except nats.js.errors.KeyNotFoundError:
        return kv
    except nats.errors.NoRespondersError as e:  # no stream answers direct gets
        raise nats.js.errors.BucketNotFoundError from e
    return kv


_PENDING = b"\x00"
"""First byte of a claim. A recorded reply is a MessagePack map, which never starts so."""

_ANSWER_MARGIN = 0.25
"""Seconds before the caller's deadline at which a waiting delivery gives up and says why,
so that the answer reaches the caller before its own timer fires."""


_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST = (10071, 10164)
"""JetStream's error codes for "the key's last revision is not the one expected"."""


class ResultStore(Protocol):
    """What the ledger needs of the results bucket (a ``KeyValue`` has it). ``create`` and
    ``update`` are bounded by a timeout of their own (they run on every call, so the ledger
    sets no second one around them)."""

    async def create(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, last: int) -> int: ...

    async def get(self, key: str) -> Any: ...

    async def delete(self, key: str, last: int) -> Any: ...


class FastResults:
    """The results bucket, with the two writes of every call (the claim and the outcome)
    sent as one request each on the client's ``ReplyInbox``, skipping nats-py's KV and
    JetStream layers (key checks, a NUID and a random token per request, the ack parsed
    into a dataclass): a third of an instance's time per call went there. A create that
    meets a tombstone (a released claim) is left to nats-py, which re-creates over it.

    Args:
        kv: the bucket (reads, deletes, and the rare create over a tombstone).
        bucket: its name.
        replies: the client's reply inbox.
        timeout: seconds one write may take.
    """

    def __init__(
        self, kv: KeyValue, bucket: str, replies: ReplyInbox, timeout: float = _TIMEOUT
    ) -> None:
        self._kv = kv
        self._subject = f"$KV.{bucket}."
        self._replies = replies
        self._timeout = timeout

    async def create(self, key: str, value: bytes) -> int:
        """Store ``value`` under ``key`` if the key holds nothing.

        Raises:
            nats.js.errors.KeyWrongLastSequenceError: the key holds a value.
            nats.errors.Error: the write failed or timed out.
        """
        revision = await self._write(key, value, 0)
        if revision is None:
            return await self._kv.create(key, value)  # over a tombstone, or it raises
        return revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Replace the value at revision ``last``.

        Raises:
            nats.js.errors.KeyWrongLastSequenceError: the key is at another revision.
            nats.errors.Error: the write failed or timed out.
        """
        revision = await self._write(key, value, last)
        if revision is None:
            raise nats.js.errors.KeyWrongLastSequenceError
        return revision

    async def get(self, key: str) -> KeyValue.Entry:
        return await self._kv.get(key)

    async def delete(self, key: str, last: int) -> bool:
        return await self._kv.delete(key, last=last)

    async def _write(self, key: str, value: bytes, last: int) -> int | None:
        """The new revision, or None when the key is not at revision ``last``."""
        try:
            ack = await stream_publish(
                self._replies,
                self._subject + key,
                value,
                timeout=self._timeout,
                headers={_EXPECTED_LAST: str(last)},
            )
        except nats.js.errors.APIError as e:
            if e.err_code in _WRONG_LAST:
                return None
            raise
        return ack.seq


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to run one call, held at ``revision`` of its key."""

    key: str
    revision: int


class ResultLedger:
    """Claims and records outcomes by call_id in the results bucket.

    Args:
        kv: the results bucket.
        instance_id: this instance, written into its claims for the message of a repeat.
    """

    def __init__(
        self, kv: ResultStore, instance_id: str, *, grace: float = 1.5, session: str = ""
    ) -> None:
        self._kv = kv
        self._instance_id = instance_id
        self._session = session
        self._nonces = itertools.count(int.from_bytes(os.urandom(4)))
        self.grace = grace
        # Claims whose create failed here but may still land (nats-py sends its buffer
        # after a reconnect): key -> the exact value. The handler never ran for them.
        self._lost: dict[str, bytes] = {}

    async def claim(
        self, key: str, deadline: float | None, *, abandoned: str | None = None
    ) -> Claim | bytes:
        """Claim ``key`` to run its call, or return the reply recorded by the run that did.

        ``key`` names the call in the bucket: ``<service>.<method>.<call_id>``, so one
        call_id used for two different methods is two calls. Without a deadline a waiting
        delivery gives up after 30 seconds. A claim held by ``abandoned`` (an instance the
        router gave up on) is waited for ``grace`` seconds at most: a handler it was running
        may still record its outcome, if the instance was only frozen.

        Raises:
            IPCError: ``UNAVAILABLE`` when the bucket does not answer, or is full
                (running without a claim could run the call twice, so it is not run);
                ``DEADLINE_EXCEEDED`` when another run holds the claim until the deadline;
                ``UNKNOWN`` when the abandoned instance holds it past the grace.
        """
        # The nonce (with the session, random per process) makes this claim recognisable if
        # the create's ack is lost.
        claim_value = _PENDING + msgpack.packb(
            [self._instance_id, time.time(), next(self._nonces), self._session]
        )
        give_up_at = (deadline if deadline is not None else time.time() + 30) - _ANSWER_MARGIN
        call_id = key.rsplit(".", 1)[-1]
        abandoned_until = time.time() + self.grace
        delay = 0.02
        while True:
            try:
                try:  # bounded by the store's own timeout
                    return Claim(key, await self._kv.create(key, claim_value))
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass
                async with asyncio.timeout(_TIMEOUT):
                    try:
                        entry = await self._kv.get(key)
                    except nats.js.errors.KeyNotFoundError:
                        continue  # released a moment ago: claim it again
            except (TimeoutError, nats.errors.Error) as e:
                if isinstance(e, nats.js.errors.APIError) and store_is_full(e):
                    raise _store_full(e) from e  # refused: nothing was stored, so not ours
                return await self._claimed_anyway(key, claim_value, e)
            value = entry.value or b""
            if not value.startswith(_PENDING):
                return value
            if self._lost.get(key) == value and entry.revision is not None:
                # Our own claim from a create that "failed": nothing ran under it.
                del self._lost[key]
                return Claim(key, entry.revision)
            holder = _holder(value)
            if holder == abandoned and time.time() + delay >= abandoned_until:
                raise IPCError(
                    f"call {call_id} was running on instance {holder}, which stopped "
                    "heartbeating before it recorded an outcome; whether it ran is unknown "
                    "(check downstream by call_id)",
                    code=ErrorCode.UNKNOWN,
                )
            if time.time() + delay >= give_up_at:
                raise IPCError(
                    f"call {call_id} is already running on instance {holder} (or that "
                    "instance died before recording an outcome); it was not run again",
                    code=ErrorCode.DEADLINE_EXCEEDED,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _claimed_anyway(self, key: str, claim_value: bytes, error: Exception) -> Claim:
        """After a failed create: the claim may have been stored and only its ack lost.

        Raises:
            IPCError: ``UNAVAILABLE``: the claim is not (known to be) ours.
        """
        try:
            async with asyncio.timeout(_TIMEOUT):
                entry = await self._kv.get(key)
        except (TimeoutError, nats.errors.Error):
            self._lost[key] = claim_value
            raise _unavailable(error) from error
        if entry.value == claim_value and entry.revision is not None:
            return Claim(key, entry.revision)
        self._lost[key] = claim_value
        raise _unavailable(error) from error

    async def clean_up(self) -> None:
        """Remove claims whose create failed here but landed later. Never raises.

        Called now and then (with the heartbeats): a late claim would otherwise make every
        retry of a call that never ran wait and be told it is "already running".
        """
        for key, value in list(self._lost.items()):
            try:
                async with asyncio.timeout(_TIMEOUT):
                    try:
                        entry = await self._kv.get(key)
                    except nats.js.errors.KeyNotFoundError:
                        entry = None
                    if entry is not None and entry.value == value and entry.revision:
                        await self._kv.delete(key, last=entry.revision)
            except (TimeoutError, nats.errors.Error):
                continue  # still unreachable: try again next time
            self._lost.pop(key, None)

    async def finish(self, claim: Claim, reply: bytes) -> bool:
        """Replace the claim with the reply; whether it was recorded.

        A reply that could not be recorded still goes to the caller; only a later repeat
        of the call would then find the claim without an outcome.
        """
        try:  # bounded by the store's own timeout
            await self._kv.update(claim.key, reply, last=claim.revision)
        except (TimeoutError, nats.errors.Error):
            return False
        return True

    async def release(self, claim: Claim) -> None:
        """Drop the claim so that a retry runs the call afresh. Never raises."""
        try:
            async with asyncio.timeout(_TIMEOUT):
                await self._kv.delete(claim.key, last=claim.revision)
        except (TimeoutError, nats.errors.Error):
            pass  # the claim stays: a retry waits for it and is told why


def _holder(value: bytes) -> str:
    holder = claim_holder(value)
    return holder[0] if holder is not None else "unknown"


def claim_holder(value: bytes | None) -> tuple[str, str] | None:
    """Who holds a claim: (instance id, its session, empty if the claim names none); None
    when ``value`` is not a claim (nothing, a recorded outcome, or unreadable)."""
    if not value or not value.startswith(_PENDING):
        return None
    try:
        fields = msgpack.unpackb(value[1:])
        session = fields[3] if len(fields) > 3 else ""
        return str(fields[0]), str(session)
    except Exception:  # a claim written by something else: name nobody
        return None


def _store_full(error: nats.js.errors.APIError) -> IPCError:
    bucket = (error.stream or "KV_results").removeprefix("KV_")
    return IPCError(
        f"the results bucket {bucket} is full ({error.description}), so the call was not run; "
        "retry later",
        code=ErrorCode.UNAVAILABLE,
        details={STORE_FULL_DETAIL: bucket},
    )


def _unavailable(error: BaseException) -> IPCError:
    reason = str(error) or type(error).__name__
    return IPCError(
        f"the results bucket did not answer ({reason}), so the call was not run",
        code=ErrorCode.UNAVAILABLE,
    )
