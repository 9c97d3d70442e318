"""``FastResults`` against a real JetStream KV bucket: the same answers as nats-py's KV."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from ipc_client_sdk._ledger import FastResults
from ipc_client_sdk.protocol import ReplyInbox


async def test_fast_writes_keep_the_bucket_rules(raw_nats: NATS) -> None:
    replies = ReplyInbox(raw_nats)
    try:
        kv = await raw_nats.jetstream().create_key_value(KeyValueConfig(bucket="RESULTS_T"))
        store = FastResults(kv, "RESULTS_T", replies)
        first = await store.create("svc.m.c1", b"claim")
        with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
            await store.create("svc.m.c1", b"second claim")
        with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
            await store.update("svc.m.c1", b"reply", last=first + 1)
        second = await store.update("svc.m.c1", b"reply", last=first)
        assert second > first
        assert (await kv.get("svc.m.c1")).value == b"reply"
        # A released claim leaves a tombstone; claiming it again must work.
        await store.delete("svc.m.c1", last=second)
        again = await store.create("svc.m.c1", b"claim again")
        assert (await store.get("svc.m.c1")).revision == again
        # A bucket that is gone: no stream answers, which is an error, not a hang.
        gone = FastResults(kv, "NO_SUCH_BUCKET", replies, timeout=1)
        with pytest.raises(nats.errors.Error):
            await gone.create("k", b"v")
    finally:
        await replies.close()
