"""Call ``service_b.do_work`` for an account, as the seed's workflow 1 draws it.

uv run python examples/call_service_b.py --resource-id acc_XYZ --count 3
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from decimal import Decimal

from ipc_client_sdk import IPCClient, IPCError
from orders import WorkRequest, WorkResult


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    p.add_argument("--resource-id", default="acc_XYZ")
    p.add_argument("--count", type=int, default=3)
    args = p.parse_args()
    async with IPCClient(args.nats_url, name="svc_a") as client:
        for i in range(args.count):
            order = WorkRequest(
                account=args.resource_id,
                quantity=100 + i,
                price=Decimal("187.25"),
                placed_at=datetime.now(UTC),
            )
            result = await client.call(
                "service_b.do_work",
                order,
                resource_id=args.resource_id,
                timeout=2.0,
                returns=WorkResult,
            )
            print(f"{result.account}: notional {result.notional} booked by {result.booked_by}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except IPCError as e:
        raise SystemExit(f"call_service_b: {e}") from None
