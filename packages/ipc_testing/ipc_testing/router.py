"""A real ``ipc-router`` process for integration and fault tests."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from ipc_router.infrastructure.lifecycle import AsyncService
from ipc_router.infrastructure.process import ChildProcess


class RouterProcessError(Exception):
    """The router process exited or never became ready."""


class RouterProcess(ChildProcess, AsyncService):
    """``python -m ipc_router`` as a child process, its output in ``log_path``.

    Args:
        nats_url: the NATS URL(s) the router connects to.
        log_path: where its stdout and stderr go.
        router_id: its id (default ``test-router``).
        args: extra command-line flags.
    """

    def __init__(
        self,
        nats_url: str,
        log_path: Path,
        *,
        router_id: str = "test-router",
        args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(log_path)
        self.nats_url = nats_url
        self.router_id = router_id
        self.args = args

    def command(self) -> list[str]:
        """The command line that starts this router."""
        return [
            sys.executable,
            "-m",
            "ipc_router",
            "--nats-url",
            self.nats_url,
            "--router-id",
            self.router_id,
            *self.args,
        ]

    async def start(self, *, timeout: float = 20.0) -> None:
        """Start and wait until the router logs that it is ready.

        Raises:
            RouterProcessError: it exited or was not ready within ``timeout``.
        """
        offset = self.log_size()
        self.spawn(self.command(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
        marker = f"router {self.router_id} ready".encode()
        deadline = time.monotonic() + timeout
        while marker not in self.log_since(offset):
            if not self.running:
                raise RouterProcessError(
                    f"router exited with {self.returncode}: {self.log_tail(5, sep="\n")}"
                )
            if time.monotonic() >= deadline:
                raise RouterProcessError(
                    f"router not ready after {timeout:g}s: {self.log_tail(5, sep="\n")}"
                )
            await asyncio.sleep(0.05)
