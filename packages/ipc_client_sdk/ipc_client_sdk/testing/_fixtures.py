"""The kit's fixtures, registered by ``plugin.py`` when the ``testing`` extra is installed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from ipc_client_sdk.testing._stack import IPCStack


@pytest_asyncio.fixture
async def ipc_stack(tmp_path: Path) -> AsyncIterator[IPCStack]:
    """A nats-server and a router for this test; nothing is left running after it."""
    stack = IPCStack(tmp_path / "ipc-stack")
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


@pytest.fixture(scope="session")
def ipc_stack_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IPCStack]:
    """A nats-server and a router shared by every test of the run."""
    # The stack outlives every test's event loop: it starts and stops in a loop of its own.
    # Its processes are plain children, so any loop can manage them; they are spawned from
    # this (the main) thread because they die with the thread that started them.
    stack = IPCStack(tmp_path_factory.mktemp("ipc-stack"))
    with asyncio.Runner() as runner:
        runner.run(stack.start())
        try:
            yield stack
        finally:
            runner.run(stack.stop())
