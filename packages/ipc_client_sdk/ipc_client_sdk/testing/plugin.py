"""The SDK testing kit's pytest plugin (``pytest11`` entry point ``ipc_client_sdk``).

- ``ipc_stack``: an ``IPCStack`` (nats-server + router on free loopback ports) for one test,
  torn down when it ends, with the clients its ``serve()`` opened.
- ``ipc_stack_session``: one ``IPCStack`` for the whole run; use ``client()`` and
  ``serving()`` in ``async with`` blocks so that nothing outlives the test's event loop.

The plugin loads wherever the SDK is installed; without the ``testing`` extra its fixtures
fail with the command that installs it, instead of breaking the whole test run.
"""

from __future__ import annotations

from types import ModuleType

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the real fixtures, or stand-ins that say what to install."""
    fixtures: ModuleType
    try:
        from ipc_client_sdk.testing import _fixtures as fixtures
    except ImportError:
        from ipc_client_sdk.testing import _unavailable as fixtures
    config.pluginmanager.register(fixtures, "ipc_client_sdk.testing.fixtures")
