"""``NatsBrokerInfo``: the connected NATS server's identity (satisfies ``BrokerInfoSource``)."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS

from ipc_router.application.ports import BrokerInfo


class NatsBrokerInfo:
    """Reads the INFO block the NATS server sent on connect.

    nats-py keeps that block only in a private attribute (``_server_info``); this adapter is
    the one place that reads it, so a nats-py change breaks one file.
    """

    def __init__(self, nc: NATS, *, embedded: bool) -> None:
        self._nc = nc
        self._embedded = embedded

    def broker_info(self) -> BrokerInfo:
        """The server as of the current connection (it changes after a reconnect)."""
        info: dict[str, Any] = dict(getattr(self._nc, "_server_info", {}) or {})
        url = self._nc.connected_url
        return BrokerInfo(
            server_id=info.get("server_id"),
            server_name=info.get("server_name"),
            version=info.get("version"),
            cluster=info.get("cluster"),
            # host and port only: the URL's user:password must not reach admin clients.
            connected_url=f"{url.scheme}://{url.hostname}:{url.port}" if url else None,
            jetstream=bool(info.get("jetstream", False)),
            embedded=self._embedded,
        )
