"""A 3-node (or n-node) JetStream cluster of real nats-server processes on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ipc_router.infrastructure.lifecycle import AsyncService
from ipc_router.infrastructure.nats_server import (
    NatsServerConfig,
    NatsServerProcess,
    free_port,
)


class NatsCluster(AsyncService):
    """n nats-server nodes routed to each other, JetStream on, on free loopback ports.

    Nodes keep their ports and stores across ``kill()``/``start()``, so a restarted node
    rejoins the cluster and clients reconnect to it. ``extra`` is configuration every node
    gets as well (an ``authorization`` block, say).
    """

    def __init__(
        self, base_dir: Path, *, size: int = 3, name: str = "ipc-test", extra: str = ""
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        cluster_ports = [free_port() for _ in range(size)]
        routes = tuple(f"nats://127.0.0.1:{p}" for p in cluster_ports)
        self.nodes = [
            NatsServerProcess(
                NatsServerConfig(
                    store_dir=base_dir / f"n{i}",
                    port=0,
                    server_name=f"{name}-n{i}",
                    cluster_name=name,
                    cluster_port=cluster_ports[i],
                    routes=tuple(r for j, r in enumerate(routes) if j != i),
                    extra=extra,
                )
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node."""
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated (what ``--nats-url`` takes)."""
        return ",".join(self.urls)

    async def start(self, *, timeout: float = 30.0) -> None:
        """Start every node, then wait until each reports healthy (JetStream meta current)."""
        for node in self.nodes:
            await node.start(wait=False)
        await asyncio.gather(*(node.wait_ready(timeout=timeout) for node in self.nodes))

    async def stop(self) -> None:
        """Stop every node; safe to call twice."""
        await asyncio.gather(*(node.stop() for node in self.nodes))
