"""The contracts of the example: the seed's ``service_b.do_work`` on an account.

Both sides import these models; only their field names and types travel.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel

from ipc_client_sdk import CallContext, Service


class WorkRequest(BaseModel):
    """An order against an account: an exact price, an aware timestamp."""

    account: str
    quantity: int
    price: Decimal
    placed_at: datetime


class WorkResult(BaseModel):
    """The booked order: its notional, exact, and who booked it."""

    account: str
    notional: Decimal
    booked_by: str
    call_id: str


service_b = Service("service_b")


@service_b.method("do_work")
async def do_work(req: WorkRequest, ctx: CallContext) -> WorkResult:
    """Book the order. ``ctx.call_id`` is the idempotency key for anything downstream."""
    return WorkResult(
        account=req.account,
        notional=req.price * req.quantity,
        booked_by=ctx.instance_id,
        call_id=ctx.call_id,
    )
