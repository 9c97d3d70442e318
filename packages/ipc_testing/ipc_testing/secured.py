"""A deployment under least privilege: an ``ipc auth`` directory, a nats-server that admits
only its identities, and a router connected as ``router.nk``.

The server runs the directory's ``authorization.conf`` as it is (what ``nats-server -c
DIR/nats.conf`` and ``ipc-router --auth-dir DIR`` run), on free loopback ports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ipc_client_sdk import Credentials, IPCClient
from ipc_client_sdk.protocol import AuthDir
from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess
from ipc_testing.router import RouterProcess

SERVICES: Mapping[str, Sequence[str] | None] = {
    "svc_a": ("service_b",),
    "service_b": None,
    "svc_x": None,
}
"""The services of the standard secured stack and whom each may call (None: everyone):
``svc_a`` calls ``service_b``; ``svc_x`` is the attacker's service, a legitimate identity
of the same deployment."""


@dataclass(eq=False)
class SecuredStack:
    """One secured deployment, started by ``start`` and stopped by ``stop``.

    Attributes:
        auth: the auth directory.
        server: the nats-server.
        router: the router (``--auth-dir``).
    """

    auth: AuthDir
    server: NatsServerProcess
    router: RouterProcess

    @classmethod
    def create(
        cls,
        workdir: Path,
        *,
        services: Mapping[str, Sequence[str] | None] = SERVICES,
        prefix: str = "ipc",
        router_args: tuple[str, ...] = (),
    ) -> SecuredStack:
        """Write the auth directory under ``workdir``; nothing runs yet."""
        auth = AuthDir(workdir / "auth")
        auth.init(prefix=prefix, host="127.0.0.1", port=4222)
        for name, calls in services.items():
            auth.add_service(name, calls)
        server = NatsServerProcess(
            NatsServerConfig(
                store_dir=workdir / "nats", port=0, extra=auth.authorization_file.read_text()
            )
        )
        router = RouterProcess(
            server.url,
            workdir / "router.log",
            args=("--auth-dir", str(auth.path), "--prefix", prefix, *router_args),
        )
        return cls(auth, server, router)

    async def start(self) -> None:
        """Start the server, then the router."""
        await self.server.start()
        await self.router.start()

    async def stop(self) -> None:
        """Stop the router and the server; never raises."""
        await self.router.stop()
        await self.server.stop()

    @property
    def url(self) -> str:
        """The server's client URL."""
        return self.server.url

    def credentials(self, identity: str) -> Credentials:
        """Credentials of ``identity`` (``router``, ``operator`` or a service)."""
        return Credentials(nkey_seed_file=self.auth.seed_file(identity))

    def env(self, identity: str) -> dict[str, str]:
        """The variables a process of ``identity`` runs with."""
        return {"IPC_NATS_NKEY": str(self.auth.seed_file(identity))}

    def client(self, identity: str, *, name: str | None = None, **kwargs: object) -> IPCClient:
        """A client of ``identity`` (not connected yet)."""
        return IPCClient(
            self.url,
            name=name or identity,
            credentials=self.credentials(identity),
            prefix=self.auth.load().prefix,
            **kwargs,  # type: ignore[arg-type]
        )
