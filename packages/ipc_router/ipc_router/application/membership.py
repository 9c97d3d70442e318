"""Instances joining and staying: registration, and heartbeats with what they report.

The api ring decodes and validates the wire requests, calls these use cases, and encodes
their answers; nothing here knows NATS or the wire format.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ipc_router.application.errors import StoreUnavailableError
from ipc_router.application.ports import ContractRepository
from ipc_router.application.registry import HeartbeatOutcome, InstanceRegistry
from ipc_router.domain import (
    ContractConflict,
    Health,
    InstanceRecord,
    Registered,
    Role,
    contract_conflicts,
)

_log = logging.getLogger("ipc_router.registry")


@dataclass(frozen=True, slots=True)
class RegisterInstance:
    """The command: register one instance with what it serves (fields already validated)."""

    service: str
    instance_id: str
    session: str
    resources: tuple[str, ...]
    methods: tuple[str, ...]
    direct_methods: tuple[str, ...]
    direct: bool
    load_balanced: bool
    contracts: Mapping[str, Mapping[str, Any]] | None = field(default=None)
    """Each method's contract (with its ``version``), or None when it registered none."""

    def record(self, now: float) -> InstanceRecord:
        """The new instance: a healthy standby at epoch 1, registered and heard from ``now``
        (the table then gives it whatever roles are free)."""
        return InstanceRecord(
            service=self.service,
            instance_id=self.instance_id,
            role=Role.STANDBY,
            health=Health.HEALTHY,
            epoch=1,
            registered_at=now,
            last_heartbeat_at=now,
            resources=self.resources,
            methods=self.methods,
            direct_methods=self.direct_methods,
            direct=self.direct,
            session=self.session,
            load_balanced=self.load_balanced,
            contract_versions=tuple(
                sorted((m, str(c.get("version", ""))) for m, c in (self.contracts or {}).items())
            ),
        )


@dataclass(frozen=True, slots=True)
class HeartbeatReport:
    """What an instance's last accepted heartbeat said, as a handover reads it."""

    heard_at: float
    """When it arrived, on the registry's monotonic clock."""
    running: int
    """Calls running on the instance when it was sent."""
    draining: bool
    """Whether the instance knew it was draining (and so refused direct calls)."""

    def shows_idle(self, since: float, *, takes_direct_calls: bool) -> bool:
        """Whether this report, heard after ``since``, says the instance runs no call and,
        if it takes direct calls, that it knows it is draining (so it refuses them)."""
        acknowledged = self.draining or not takes_direct_calls
        return self.heard_at > since and self.running == 0 and acknowledged


class HeartbeatReports:
    """The last accepted heartbeat of each instance: heartbeats write it, handovers read it."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], HeartbeatReport] = {}

    def note(self, service: str, instance_id: str, report: HeartbeatReport) -> None:
        """Keep ``report`` as the instance's latest."""
        self._last[(service, instance_id)] = report

    def last(self, service: str, instance_id: str) -> HeartbeatReport | None:
        """The instance's latest report, or None when none was accepted."""
        return self._last.get((service, instance_id))

    def forget(self, service: str, instance_id: str) -> None:
        """Drop the instance's report (it left)."""
        self._last.pop((service, instance_id), None)


@dataclass(frozen=True, slots=True)
class HeartbeatAnswer:
    """What the sender of a heartbeat is told."""

    outcome: HeartbeatOutcome
    record: InstanceRecord | None
    """Its current record when the outcome is OK (None if it left meanwhile)."""
    owned: tuple[str, ...] = ()
    """The resources it owns, sent with every answer so that a missed notice is put right."""


class Membership:
    """Registration and heartbeats against the registry.

    Args:
        registry: the routing table and its stores.
        reports: where each instance's last heartbeat report is kept for handovers.
        contracts: where the instances' method contracts are kept (None: not kept).
    """

    def __init__(
        self,
        registry: InstanceRegistry,
        reports: HeartbeatReports,
        contracts: ContractRepository | None = None,
    ) -> None:
        self._registry = registry
        self._reports = reports
        self._contracts = contracts

    async def register(self, command: RegisterInstance) -> Registered:
        """Register an instance with its claims, and save them and its contracts.

        The contracts are saved once the registration stands (a refused one must not
        replace the live holder's); a store that fails to save them costs ``describe``
        that instance's contracts until it registers again, not the registration.

        Raises:
            InstanceConflictError: a live process already holds the instance id.
        """
        outcome = await self._registry.register(command.record(self._registry.now()))
        if self._contracts is not None:
            try:
                await self._contracts.save(command.service, command.instance_id, command.contracts)
            except StoreUnavailableError as e:
                _log.warning(
                    "contracts of %s.%s not saved (%s); describe lacks them until it "
                    "registers again",
                    command.service,
                    command.instance_id,
                    e,
                )
        return outcome

    def contract_conflicts(self, record: InstanceRecord) -> list[ContractConflict]:
        """The methods for which ``record`` registered another contract than another
        instance of its service did."""
        return contract_conflicts(record, self._registry.table.instances())

    async def heartbeat(
        self,
        service: str,
        instance_id: str,
        *,
        session: str | None,
        epoch: int | None,
        running: int,
        draining: bool,
    ) -> HeartbeatAnswer:
        """Note a heartbeat and what it reports; say what its sender is to be told."""
        heard = self._registry.monotonic()  # when it arrived, before the registry's I/O
        outcome = await self._registry.heartbeat(service, instance_id, session, epoch)
        if outcome is not HeartbeatOutcome.OK:
            return HeartbeatAnswer(outcome, None)
        self._reports.note(service, instance_id, HeartbeatReport(heard, running, draining))
        table = self._registry.table
        record = table.get(service, instance_id)
        owned = table.owned(service, instance_id) if record is not None else ()
        return HeartbeatAnswer(outcome, record, owned)
