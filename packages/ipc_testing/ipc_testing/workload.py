"""The seed's workflow as a test workload: ``service_b.do_work`` on an account.

Tests, benchmarks and the example share it. ``CountingService`` counts every handler run per
call_id, which is how the exactly-once tests observe "the handler ran once".
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel

from ipc_client_sdk import CallContext, IPCError, Service
from ipc_client_sdk.protocol import ErrorCode


class WorkRequest(BaseModel):
    """An order-like request: exact money, an aware timestamp."""

    account: str
    amount: Decimal
    placed_at: datetime
    delay_s: float = 0.0
    fail_with: str | None = None


class WorkResult(BaseModel):
    """What ``do_work`` answers: the request's values back, and who served it."""

    account: str
    amount: Decimal
    placed_at: datetime
    instance_id: str
    resource_id: str | None
    call_id: str

    @classmethod
    def answer(cls, req: WorkRequest, ctx: CallContext) -> WorkResult:
        """The result ``do_work`` gives for ``req``, served under ``ctx``."""
        return cls(
            account=req.account,
            amount=req.amount,
            placed_at=req.placed_at,
            instance_id=ctx.instance_id,
            resource_id=ctx.resource_id,
            call_id=ctx.call_id,
        )


class CountingService:
    """``service_b`` with ``do_work``; counts handler runs per call_id.

    ``fail_with`` in the request makes the handler raise: ``"boom"`` a plain exception,
    ``"denied"`` an ``IPCError`` with code ``PERMISSION_DENIED``.
    """

    def __init__(self, name: str = "service_b", *, load_balanced: bool = False) -> None:
        self.runs: Counter[str] = Counter()
        self.service = Service(name, load_balanced=load_balanced)
        self.service.method("do_work")(self.do_work)

    async def do_work(self, req: WorkRequest, ctx: CallContext) -> WorkResult:
        self.runs[ctx.call_id] += 1
        if req.delay_s:
            await asyncio.sleep(req.delay_s)
        if req.fail_with == "boom":
            raise RuntimeError("boom")
        if req.fail_with == "denied":
            raise IPCError("not your account", code=ErrorCode.PERMISSION_DENIED)
        return WorkResult.answer(req, ctx)
