"""``IPCStack``: a real nats-server and a real router on free loopback ports, for tests.

The pytest fixtures ``ipc_stack`` (one per test) and ``ipc_stack_session`` (one per run)
are this object; it can also be used on its own (``async with IPCStack(tmp) as stack``).
Both processes run in their own session and die with the test process, so a crashed run
leaves nothing behind either.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ipc_client_sdk._client import IPCClient
from ipc_client_sdk._service import Service
from ipc_client_sdk._serving import ServiceInstance
from ipc_client_sdk.testing._instance import InstanceProcess
from ipc_client_sdk.testing._router import RouterProcess
from ipc_client_sdk.testing.waiting import eventually, until
from ipc_router.infrastructure.lifecycle import AsyncService
from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess


class IPCStack(AsyncService):
    """One nats-server (JetStream on) and one ``ipc-router`` against it.

    Args:
        workdir: where the server's store and both processes' logs go.
        router_args: extra ``ipc-router`` flags (e.g. ``("--heartbeat-timeout", "1")``).
    """

    until = staticmethod(until)
    eventually = staticmethod(eventually)

    def __init__(self, workdir: Path, *, router_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.nats = NatsServerProcess(NatsServerConfig(store_dir=workdir / "nats", port=0))
        self.router = RouterProcess(
            self.nats.url, workdir / "router.log", router_id="ipc-stack", args=tuple(router_args)
        )
        self._clients: list[IPCClient] = []
        self._instances: list[InstanceProcess] = []

    @property
    def url(self) -> str:
        """The NATS URL every client of this stack connects to."""
        return self.nats.url

    async def start(self) -> None:
        """Start nats-server, then the router; return once the router is ready.

        Raises:
            NatsServerError, RouterProcessError: a process did not come up (its log's
                last lines say why); whatever had started is stopped again.
        """
        try:
            await self.nats.start()
            await self.router.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close the clients ``serve()`` opened, stop instance processes, the router and
        nats-server; safe to call twice."""
        await self.close_clients()
        for proc in self._instances:
            await proc.stop()
        await self.router.stop()
        await self.nats.stop()

    def client(self, name: str, **options: Any) -> IPCClient:
        """A client of this stack, not yet connected: use it as ``async with``.

        Args:
            name: the client's name (the service it speaks for).
            options: further ``IPCClient`` keyword arguments.
        """
        return IPCClient(self.url, name=name, **options)

    async def serve(
        self,
        service: Service,
        *,
        instance_id: str,
        resources: Sequence[str] = (),
        **options: Any,
    ) -> ServiceInstance:
        """Serve ``service`` in this process through a client of its own.

        The client stays open until ``close_clients()`` (the ``ipc_stack`` fixture calls it
        when the test ends; with ``ipc_stack_session`` use ``serving()`` instead).

        Args:
            service: the methods to serve.
            instance_id: the instance's id.
            resources: resources it claims.
            options: further ``client.serve`` keyword arguments.
        """
        client = self.client(f"{service.name}-{instance_id}")
        await client.__aenter__()
        self._clients.append(client)
        return await client.serve(service, instance_id=instance_id, resources=resources, **options)

    @contextlib.asynccontextmanager
    async def serving(
        self,
        service: Service,
        *,
        instance_id: str,
        resources: Sequence[str] = (),
        **options: Any,
    ) -> AsyncIterator[ServiceInstance]:
        """``serve()`` as an ``async with`` block: the instance stops at its end."""
        async with self.client(f"{service.name}-{instance_id}") as client:
            instance = await client.serve(
                service, instance_id=instance_id, resources=resources, **options
            )
            try:
                yield instance
            finally:
                await instance.stop()

    async def close_clients(self) -> None:
        """Close every client ``serve()`` opened (their instances stop first)."""
        clients, self._clients = self._clients, []
        for client in reversed(clients):
            await client.close()

    async def spawn_instance(
        self,
        target: str,
        *,
        instance_id: str,
        resources: Sequence[str] = (),
        timeout: float = 20.0,
    ) -> InstanceProcess:
        """Serve ``target`` (``"module:service"``, importable here) in a process of its own.

        The process is stopped with the stack; ``kill()``/``pause()``/``stop()`` on it
        inject the faults a service must survive.

        Raises:
            RuntimeError: it did not serve within ``timeout`` (its log's last lines say why).
        """
        proc = InstanceProcess(
            self.url, target, instance_id, self.workdir, resources=tuple(resources)
        )
        self._instances.append(proc)
        await proc.start(timeout=timeout)
        return proc

    def kill_router(self) -> None:
        """SIGKILL the router: a crash."""
        self.router.kill()

    def pause_router(self) -> None:
        """Freeze the router (SIGSTOP): alive but silent, like a hung host."""
        self.router.pause()

    def resume_router(self) -> None:
        """Thaw a paused router."""
        self.router.resume()

    async def restart_router(self) -> None:
        """Stop (or reap a killed) router and start it again; return once it is ready."""
        await self.router.stop()
        await self.router.start()
