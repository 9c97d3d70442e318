"""Lifecycle units: half-started services clean up; a stalled store fails instead of hanging."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.js.kv import KeyValue

from ipc_client_sdk.protocol import Codec
from ipc_router.application.errors import StoreUnavailableError
from ipc_router.infrastructure.kv_registry import JetStreamInstanceRepository
from ipc_router.infrastructure.lifecycle import AsyncService


class FailingStart(AsyncService):
    def __init__(self) -> None:
        self.stopped = 0

    async def start(self) -> None:
        raise RuntimeError("half way up")

    async def stop(self) -> None:
        self.stopped += 1


async def test_failed_start_is_stopped_before_the_error_surfaces() -> None:
    service = FailingStart()
    with pytest.raises(RuntimeError):
        async with service:
            pytest.fail("the body must not run")
    assert service.stopped == 1


class StalledBucket:
    """A KV bucket that says it holds entries, and whose watcher never delivers them."""

    async def status(self) -> Any:
        return SimpleNamespace(values=1)

    async def watchall(self, **_: Any) -> Any:
        await asyncio.Event().wait()


async def test_stalled_registry_read_fails_within_its_timeout() -> None:
    repo = JetStreamInstanceRepository(
        cast(KeyValue, StalledBucket()), "IPC_REGISTRY", Codec(), timeout=0.2
    )
    with pytest.raises(StoreUnavailableError) as info:
        await asyncio.wait_for(repo.list_instances(), 5)
    assert "IPC_REGISTRY" in str(info.value)
