"""The ``status`` query: who the router is, how long it has run, what it sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ipc_router.application.ports import BrokerInfo, BrokerInfoSource, Clock, InstanceRepository
from ipc_router.domain import RegistryCounts


@dataclass(frozen=True, slots=True)
class RouterIdentity:
    """Facts about this router process that do not change while it runs."""

    router_id: str
    version: str
    subject_prefix: str
    started_at: float


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The answer to a status query."""

    identity: RouterIdentity
    uptime_s: float
    broker: BrokerInfo
    counts: RegistryCounts
    leading: bool


class GetRouterStatus:
    """Answers the status query from the registry, the broker connection and the clock."""

    def __init__(
        self,
        identity: RouterIdentity,
        instances: InstanceRepository,
        broker: BrokerInfoSource,
        clock: Clock,
        *,
        leading: Callable[[], bool] = lambda: False,
    ) -> None:
        self._identity = identity
        self._instances = instances
        self._broker = broker
        self._clock = clock
        self._leading = leading

    async def __call__(self) -> StatusReport:
        """Build a fresh report."""
        instances = await self._instances.list_instances()
        return StatusReport(
            identity=self._identity,
            uptime_s=max(0.0, self._clock.now() - self._identity.started_at),
            broker=self._broker.broker_info(),
            counts=RegistryCounts.of(instances),
            leading=self._leading(),
        )
