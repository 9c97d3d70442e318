"""Fixtures for tests that look at the wire beneath the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from ipc_router.infrastructure.nats_server import NatsServerProcess


@pytest.fixture
async def raw_nats(nats_server: NatsServerProcess) -> AsyncIterator[NATS]:
    """A plain NATS connection to ``nats_server``, beside the clients under test: for raw
    requests, subscriptions to protocol subjects, and JetStream lookups."""
    nc = await nats.connect(nats_server.url)
    try:
        yield nc
    finally:
        await nc.close()
