"""A deployment under least privilege: an ``ipc auth`` directory, a nats-server that admits
only its identities, and a router connected as ``router.nk``.

The server runs the directory's ``authorization.conf`` as it is (what ``nats-server -c
DIR/nats.conf`` and ``ipc-router --auth-dir DIR`` run), on free loopback ports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ipc_client_sdk import Credentials, IPCClient
from ipc_client_sdk.protocol import AuthDir
from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess
from ipc_testing.router import RouterProcess
from ipc_testing.waiting import until

SERVICES: Mapping[str, Sequence[str] | None] = {
    "svc_a": ("service_b",),
    "service_b": None,
    "svc_x": None,
}
"""The services of the standard secured stack and whom each may call (None: everyone):
``svc_a`` calls ``service_b``; ``svc_x`` is the attacker's service, a legitimate identity
of the same deployment."""


DENIED = 0.5
"""Seconds a raw request waits for an answer that NATS may never let through."""


@dataclass(eq=False)
class RawConnection:
    """A plain nats-py connection of one identity (no SDK check in the way: what an
    attacker holding that identity's seed would use), and the permissions violations NATS
    reported to it."""

    nc: NATS
    violations: list[str] = field(default_factory=list)

    async def refused(self, fragment: str) -> None:
        """Wait until NATS reports a permissions violation naming ``fragment`` (nats-server
        2.15 reports it in lower case)."""
        wanted = fragment.lower()
        await until(lambda: any(wanted in v.lower() for v in self.violations), within=5)

    async def sniff(self, subject: str) -> list[Msg]:
        """Subscribe to ``subject``: what it receives lands in the returned list."""
        got: list[Msg] = []

        async def on(msg: Msg) -> None:
            got.append(msg)

        await self.nc.subscribe(subject, cb=on)
        await self.nc.flush()
        return got

    async def request(self, subject: str, data: bytes) -> Msg | None:
        """Send a request; the answer, or None when none came (NATS dropped it)."""
        try:
            return await self.nc.request(subject, data, timeout=DENIED)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None


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

    async def raw(self, identity: str) -> RawConnection:
        """A connected ``RawConnection`` of ``identity``; the caller closes its ``nc``."""
        raw = RawConnection(nc=NATS())

        async def on_error(e: Exception) -> None:
            if "permissions violation" in str(e).lower():
                raw.violations.append(str(e))

        options = self.credentials(identity).nats_options()
        await raw.nc.connect(self.url, error_cb=on_error, max_reconnect_attempts=0, **options)
        return raw

    def client(self, identity: str, *, name: str | None = None, **kwargs: object) -> IPCClient:
        """A client of ``identity`` (not connected yet)."""
        return IPCClient(
            self.url,
            name=name or identity,
            credentials=self.credentials(identity),
            prefix=self.auth.load().prefix,
            **kwargs,  # type: ignore[arg-type]
        )
