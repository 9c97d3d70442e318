"""A real ``ipc-router`` process for integration and fault tests."""

from __future__ import annotations

import os
import sys
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
        ready = f"router {self.router_id} ready"
        if not await self.wait_for_output(ready, since=offset, timeout=timeout):
            why = (
                f"exited with {self.returncode}"
                if not self.running
                else f"not ready after {timeout:g}s"
            )
            raise RouterProcessError(f"router {why}: {self.log_tail(5, sep="\n")}")
