"""Workflow 1 in one process: serve ``service_b`` and call it through the router.

Start the router first (``uv run ipc-router``), then:

    uv run python examples/workflow1.py
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from ipc_client_sdk import IPCClient, IPCError, ServiceUnavailableError
from orders import WorkRequest, WorkResult, service_b

URL = sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"


async def main() -> None:
    async with (
        IPCClient(URL, name="service_b") as server,
        IPCClient(URL, name="svc_a") as caller,
    ):
        instance = await server.serve(service_b, instance_id="b1", resources=["acc_XYZ"])
        order_id = f"order-{uuid.uuid4().hex[:12]}"  # the client's own id for this order
        order = WorkRequest(
            account="acc_XYZ", quantity=100, price=Decimal("187.25"), placed_at=datetime.now(UTC)
        )
        result = await caller.call(
            "service_b.do_work",
            order,
            resource_id="acc_XYZ",
            timeout=2.0,
            returns=WorkResult,
            call_id=order_id,  # our own id: a retry can never book twice
        )
        print(f"booked {result.notional} for {result.account} on {result.booked_by}")
        again = await caller.call(
            "service_b.do_work",
            order,
            resource_id="acc_XYZ",
            returns=WorkResult,
            call_id=order_id,
        )
        print(f"retry with the same call_id answered from the record: {again == result}")
        await instance.stop()
        try:
            await caller.call("service_b.do_work", order, resource_id="acc_XYZ", timeout=2.0)
        except ServiceUnavailableError as e:
            print(f"after stop: {e.code.value}: {e.message}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except IPCError as e:
        raise SystemExit(f"workflow1: {e}") from None
