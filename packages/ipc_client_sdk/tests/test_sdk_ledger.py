"""The result ledger's rules, against an in-memory stand-in for a KV bucket."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import nats.errors
import nats.js.errors
import pytest
from nats.js.kv import KeyValue

from ipc_client_sdk import IPCError
from ipc_client_sdk._ledger import Claim, ResultLedger
from ipc_client_sdk.protocol import ErrorCode


@dataclass
class Entry:
    value: bytes
    revision: int


class FakeBucket:
    """create/get/update/delete with revisions, like a JetStream KV bucket.

    ``lose_next_ack`` stores the next create and then fails as if its ack was lost;
    ``down`` fails every operation.
    """

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}
        self.revision = 0
        self.lose_next_ack = False
        self.down_after_create = False
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise nats.errors.TimeoutError

    async def create(self, key: str, value: bytes) -> int:
        self._check()
        if key in self.data:
            raise nats.js.errors.KeyWrongLastSequenceError
        self.revision += 1
        self.data[key] = Entry(value, self.revision)
        if self.lose_next_ack:
            self.lose_next_ack = False
            if self.down_after_create:
                self.down_after_create = False
                self.down = True
            raise nats.errors.TimeoutError
        return self.revision

    async def get(self, key: str) -> Entry:
        self._check()
        if key not in self.data:
            raise nats.js.errors.KeyNotFoundError
        return self.data[key]

    async def update(self, key: str, value: bytes, last: int) -> int:
        self._check()
        if key not in self.data or self.data[key].revision != last:
            raise nats.js.errors.KeyWrongLastSequenceError
        self.revision += 1
        self.data[key] = Entry(value, self.revision)
        return self.revision

    async def delete(self, key: str, last: int) -> None:
        self._check()
        if key in self.data and self.data[key].revision != last:
            raise nats.js.errors.KeyWrongLastSequenceError
        self.data.pop(key, None)


def ledger(bucket: FakeBucket, instance_id: str = "b1") -> ResultLedger:
    return ResultLedger(cast(KeyValue, cast(Any, bucket)), instance_id)


async def test_one_claim_wins_and_a_repeat_gets_the_recorded_outcome() -> None:
    bucket = FakeBucket()
    first = await ledger(bucket).claim("c1", time.time() + 5)
    assert isinstance(first, Claim)
    assert await ledger(bucket, "b2").finish(first, b"\x81reply") is True
    assert await ledger(bucket, "b2").claim("c1", time.time() + 5) == b"\x81reply"


async def test_a_repeat_waits_for_a_running_claim_and_names_its_holder() -> None:
    bucket = FakeBucket()
    assert isinstance(await ledger(bucket).claim("c1", time.time() + 5), Claim)
    with pytest.raises(IPCError) as info:
        await ledger(bucket, "b2").claim("c1", time.time() + 0.5)
    assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert "already running on instance b1" in info.value.message


async def test_a_released_claim_can_be_claimed_again() -> None:
    bucket = FakeBucket()
    first = await ledger(bucket).claim("c1", time.time() + 5)
    assert isinstance(first, Claim)
    await ledger(bucket).release(first)
    assert isinstance(await ledger(bucket, "b2").claim("c1", time.time() + 5), Claim)


async def test_a_claim_whose_ack_was_lost_is_still_recognised_as_ours() -> None:
    bucket = FakeBucket()
    bucket.lose_next_ack = True
    claim = await ledger(bucket).claim("c1", time.time() + 5)
    assert isinstance(claim, Claim) and claim.revision == bucket.data["c1"].revision


async def test_a_bucket_that_does_not_answer_means_the_call_is_not_run() -> None:
    bucket = FakeBucket()
    bucket.down = True
    with pytest.raises(IPCError) as info:
        await ledger(bucket).claim("c1", time.time() + 5)
    assert info.value.code is ErrorCode.UNAVAILABLE and info.value.retryable
    claim = Claim("c1", 1)
    assert await ledger(bucket).finish(claim, b"\x81reply") is False
    await ledger(bucket).release(claim)  # never raises


async def test_a_claim_that_failed_but_landed_later_is_adopted_or_cleaned_up() -> None:
    bucket = FakeBucket()
    mine = ledger(bucket)
    bucket.lose_next_ack = True
    bucket.down_after_create = True  # the create lands, then nothing answers
    with pytest.raises(IPCError):
        await mine.claim("c1", time.time() + 5)
    bucket.down = False
    # The same instance gets the call again: it knows the claim is its own and runs it.
    again = await mine.claim("c1", time.time() + 5)
    assert isinstance(again, Claim)
    # And a late claim nobody came back for is removed, so other instances may run it.
    bucket.lose_next_ack = True
    bucket.down_after_create = True
    with pytest.raises(IPCError):
        await mine.claim("c2", time.time() + 5)
    bucket.down = False
    await mine.clean_up()
    assert "c2" not in bucket.data
    assert isinstance(await ledger(bucket, "b2").claim("c2", time.time() + 5), Claim)
