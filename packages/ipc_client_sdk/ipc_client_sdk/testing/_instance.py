"""A service instance in a process of its own: ``IPCStack.spawn_instance``.

``python -m ipc_client_sdk.testing._instance NATS_URL MODULE:SERVICE INSTANCE_ID
[--resource R ...]`` serves the service until SIGTERM (a planned stop: hand over, finish the
calls in flight) and prints ``serving as <role>`` once registered, each role change, and
``stopped``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from ipc_client_sdk._client import IPCClient
from ipc_client_sdk._launch import load_service, serve_until_signalled
from ipc_router.infrastructure.process import ChildProcess


class InstanceProcess(ChildProcess):
    """One instance of an importable service as a child process; its output in
    ``<workdir>/<instance_id>.log``.

    ``kill()`` (a crash), ``pause()``/``resume()`` (a hung host) and ``stop()`` (SIGTERM,
    the planned way) come from ``ChildProcess``.
    """

    def __init__(
        self,
        nats_url: str,
        target: str,
        instance_id: str,
        workdir: Path,
        *,
        resources: tuple[str, ...] = (),
    ) -> None:
        super().__init__(workdir / f"{instance_id}.log")
        self.nats_url = nats_url
        self.target = target
        self.instance_id = instance_id
        self.resources = resources

    async def start(self, *, timeout: float = 20.0) -> None:
        """Start it and wait until it serves.

        Raises:
            RuntimeError: it did not serve within ``timeout``.
        """
        offset = self.log_size()
        argv = [sys.executable, "-m", "ipc_client_sdk.testing._instance"]
        argv += [self.nats_url, self.target, self.instance_id]
        for resource in self.resources:
            argv += ["--resource", resource]
        # The child imports the target the way this process would: same sys.path.
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.spawn(argv, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path})
        if not await self.wait_for_output("serving as", since=offset, timeout=timeout):
            raise RuntimeError(f"instance {self.instance_id} did not serve: {self.log_tail(5)}")


async def _run(url: str, target: str, instance_id: str, resources: list[str]) -> None:
    service = load_service(target)
    async with IPCClient(url, name=f"{service.name}-{instance_id}") as client:
        await serve_until_signalled(
            client, service, instance_id=instance_id, resources=resources, say=_say
        )


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    """Serve one instance until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m ipc_client_sdk.testing._instance")
    parser.add_argument("nats_url")
    parser.add_argument("target")
    parser.add_argument("instance_id")
    parser.add_argument("--resource", action="append", default=[])
    args = parser.parse_args()
    asyncio.run(_run(args.nats_url, args.target, args.instance_id, args.resource))


if __name__ == "__main__":
    main()
