"""The leadership rules with a fake lease and fake duties (no NATS): the term counts from
a renewal's send and ends before the lease can expire, whatever the event loop is doing."""

from __future__ import annotations

import asyncio
import time

from ipc_router.application.leadership import TERM, Leadership
from ipc_testing import until

TTL = 0.5


class FakeLease:
    holder = "r1"

    def __init__(self) -> None:
        self.renewals = 0
        self.renew_delay = 0.0
        self.released = False

    async def acquire(self) -> bool:
        return True

    async def renew(self, *, timeout: float | None = None) -> bool:
        await asyncio.sleep(self.renew_delay)
        self.renewals += 1
        return True

    def forget(self) -> None:
        pass

    async def release(self) -> None:
        self.released = True


class FakeDuties:
    def __init__(self) -> None:
        self.running = False
        self.stops: list[float] = []

    async def start(self) -> None:
        self.running = True

    async def stop(self, *, grace: float = 5.0) -> None:
        self.running = False
        self.stops.append(grace)


async def test_a_leader_frozen_past_its_term_is_out_of_term_before_its_loop_runs_again() -> None:
    lease, duties = FakeLease(), FakeDuties()
    leadership = Leadership(lease, duties, TTL)
    await leadership.start()
    try:
        assert leadership.leading and leadership.in_term()
        time.sleep(TTL * TERM + 0.05)  # noqa: ASYNC251 - the freeze itself: the loop is blocked
        # Nothing ran in between: the duties, asking before they act, already see the end.
        assert not leadership.in_term()
        await until(lambda: not duties.running, within=5)
        assert duties.stops == [0]  # a step-down: calls in flight go to the next leader
    finally:
        await leadership.stop()


async def test_a_renewal_slower_than_the_term_ends_the_term() -> None:
    lease, duties = FakeLease(), FakeDuties()
    leadership = Leadership(lease, duties, TTL)
    await leadership.start()
    try:
        lease.renew_delay = TTL  # longer than any budget the term leaves
        await until(lambda: not duties.running, within=5)
        assert not leadership.leading and not leadership.in_term()
    finally:
        await leadership.stop()
    assert lease.released
