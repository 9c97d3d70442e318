"""``Router``: one router process, from the embedded nats-server to the connection's end.

It runs the process around the objects that ``ipc_router.bootstrap`` (the composition
root) builds: start the embedded server when no URL is configured, connect, provision the
streams and buckets, then serve what the root wired.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from nats.aio.client import Client as NATS

from ipc_client_sdk import IPCConnectionError
from ipc_client_sdk.protocol import Subjects, close_nats, servers_label
from ipc_router.api.config import RouterConfig
from ipc_router.api.http import HttpEndpoint, MetricsPage
from ipc_router.bootstrap import (
    RouterDependencies,
    RouterServices,
    Wiring,
    build_router,
    embedded_server,
    storage_settings,
    with_metrics,
)
from ipc_router.infrastructure.jetstream_setup import (
    ProvisioningError,
    RouterStores,
    provision,
)
from ipc_router.infrastructure.kv_lease import lease_ttl
from ipc_router.infrastructure.lifecycle import AsyncService
from ipc_router.infrastructure.nats_server import NatsServerError, NatsServerProcess

_log = logging.getLogger("ipc_router")


class RouterStartError(Exception):
    """The router could not start; the message is one line for the operator.

    Attributes:
        exit_code: 3 when NATS was unreachable, 1 otherwise.
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class Router(AsyncService):
    """A running router process: ``async with Router(config) as router: ...``.

    Start: run the embedded nats-server when no URL is configured, connect, create the
    JetStream streams and buckets (idempotently), serve the admin subjects. Stop: drain the
    connection (in-flight handlers finish), then stop the embedded server.

    Args:
        config: the router's settings.
        deps: what it is built with (the defaults: a plain NATS connection, the durable
            call path, the system clock).
    """

    def __init__(self, config: RouterConfig, deps: RouterDependencies | None = None) -> None:
        self.config = config
        self.deps = with_metrics(config, deps or RouterDependencies())
        self.subjects = Subjects(config.prefix)
        self.codec = self.deps.codec
        self.embedded: NatsServerProcess | None = None
        self.stores: RouterStores | None = None
        self._nc: NATS | None = None
        self.storage = storage_settings(config)
        self._services: RouterServices | None = None
        self._started_at = time.time()
        self._stopping = False
        self._connected = False  # nats-py also calls closed_cb when a first connect fails
        self._store_lock: TextIO | None = None
        self._http: HttpEndpoint | None = None
        self.lost = asyncio.Event()
        """Set when the NATS connection closed for good while the router was running."""

    @property
    def nats_url(self) -> str:
        """The URL(s) the router connects to."""
        if self.config.nats_url:
            return self.config.nats_url
        if self.embedded is not None:
            return self.embedded.url
        return f"nats://{self.config.embedded_host}:{self.config.embedded_port}"

    async def start(self) -> None:
        """Bring the router up.

        Raises:
            RouterStartError: NATS unreachable, embedded server failed, JetStream refused.
        """
        try:
            await self._start_http()
            if self.config.nats_url is None:
                await self._start_embedded()
            nc = self._nc = await self.deps.connect(self.config, self.nats_url, self._on_closed)
            self._connected = True
            self.stores = await provision(nc.jetstream(), self.subjects, self.storage)
            # The leader counts its term against the TTL JetStream enforces, not the asked.
            ttl = await lease_ttl(
                self.stores.leases, self.subjects.leases_bucket, self.storage.lease_ttl_s
            )
            self.storage = replace(self.storage, lease_ttl_s=ttl)
            wiring = Wiring(nc, self.stores, self.config, self.subjects, self.storage, self.deps)
            self._services = build_router(
                wiring, embedded=self.embedded is not None, started_at=self._started_at
            )
            await self._services.start()
        except IPCConnectionError as e:
            await self.stop()
            raise RouterStartError(str(e), exit_code=3) from e
        except (NatsServerError, ProvisioningError) as e:
            await self.stop()
            raise RouterStartError(str(e)) from e
        except BaseException:
            await self.stop()
            raise
        _log.info(
            "router %s ready on %s (prefix %r, credentials: %s)",
            self.config.router_id,
            servers_label(self.nats_url),
            self.subjects.prefix,
            self.config.credentials.identity,
        )

    @property
    def http_port(self) -> int | None:
        """The port of ``/metrics``, ``/healthz`` and ``/readyz`` (None: not served)."""
        return self._http.port if self._http is not None else None

    async def _start_http(self) -> None:
        """Serve the probes (and the metrics) from the start: they say 503 until ready."""
        port = self.config.metrics_port
        if port is None:
            return
        metrics = self.deps.metrics
        http = HttpEndpoint(
            self.config.metrics_host,
            port,
            self,
            metrics if isinstance(metrics, MetricsPage) else None,
        )
        try:
            await http.start()
        except OSError as e:
            raise RouterStartError(
                f"cannot serve metrics on {self.config.metrics_host}:{port}: {e.strerror or e}"
                " (is another router using that port? pick another with --metrics-port)"
            ) from e
        self._http = http

    def liveness(self) -> str | None:
        """Why the router is not alive (``/healthz``): its NATS connection is down."""
        nc = self._nc
        if nc is None:
            return "stopping" if self._stopping else "starting: not connected to NATS yet"
        if not nc.is_connected:
            return "not connected to NATS"
        return None

    async def readiness(self) -> str | None:
        """Why the router is not ready (``/readyz``): its streams and buckets are missing,
        or it is a standby that cannot reach the lease (it could not take over)."""
        services = self._services
        if services is None:
            return "starting"
        missing = await services.probe.missing()
        if missing is not None:
            return missing
        if services.leading or services.lease_reachable:
            return None
        return "standby router cannot reach the lease bucket"

    async def _start_embedded(self) -> None:
        store = self.config.data_dir.resolve() / "nats"
        self._lock_store(store)
        server = embedded_server(self.config, store)
        try:
            await server.start()
        except NatsServerError as e:
            await server.stop()
            raise NatsServerError(
                f"embedded {e}. Is another nats-server or router using port "
                f"{self.config.embedded_port}? Pass --nats-url to use a running server, "
                "or --embedded-port to pick another port."
            ) from e
        self.embedded = server
        _log.info(
            "started embedded nats-server %s at %s (data: %s, log: %s)",
            server.version(),
            server.url,
            store,
            server.log_path,
        )
        if self.config.auth_dir is not None:
            _log.info(
                "the embedded nats-server admits only the identities of %s, with their "
                "permissions",
                self.config.auth_dir,
            )
            return
        host = self.config.embedded_host
        reach = (
            f"it listens on {host} only (this machine)"
            if _is_loopback(host)
            else f"it listens on {host}: other machines can reach it too"
        )
        _log.warning(
            "the embedded nats-server at %s runs WITHOUT AUTHENTICATION: anyone who can reach "
            "its port can do anything (serve as any service, read every call, operate the "
            "routers); %s. To secure it: `ipc auth init DIR`, then `ipc-router --auth-dir DIR` "
            "(or run nats-server -c DIR/nats.conf and pass --nats-url with --nats-nkey "
            "DIR/router.nk)",
            server.url,
            reach,
        )

    def _lock_store(self, store: Path) -> None:
        """Hold an exclusive lock on the embedded store for the router's lifetime.

        Two nats-servers on one JetStream store corrupt it; a second router started in the
        same folder must fail instead.

        Raises:
            NatsServerError: another running router holds the folder.
        """
        store.mkdir(parents=True, exist_ok=True)
        lock = (store / "router.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            lock.close()
            raise NatsServerError(
                f"data folder {store.parent} is in use by another router; give this one "
                "its own --data-dir, or pass --nats-url to share that router's NATS"
            ) from e
        self._store_lock = lock

    async def _on_closed(self) -> None:
        if self._connected and not self._stopping:
            _log.error("the NATS connection closed for good; the router cannot go on")
            self.lost.set()

    async def stop(self) -> None:
        """Finish in-flight calls, drain NATS, stop the embedded server. Idempotent."""
        self._stopping = True
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._services is not None:
            await self._services.stop()
            self._services = None
        if self._nc is not None:
            await close_nats(self._nc)
            self._nc = None
        if self.embedded is not None:
            await self.embedded.stop()
            _log.info("stopped embedded nats-server")
            self.embedded = None
        if self._store_lock is not None:
            self._store_lock.close()  # releases the lock
            self._store_lock = None


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (a loopback address or ``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
