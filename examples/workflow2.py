"""Workflow 2: an active and a standby in processes of their own; the active is killed.

Start the router first (``uv run ipc-router``), then:

    uv run python examples/workflow2.py

It starts ``service_b`` twice with ``ipc run`` (b1 registers first and is active for
acc_XYZ, b2 stands by), books orders for acc_XYZ in a loop, kills b1 with SIGKILL, and shows the
orders going on at b2 once the router has failed over, then stops b2 the planned way.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from ipc_client_sdk import IPCClient, IPCError
from orders import WorkRequest, WorkResult

URL = sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"
EXAMPLES = Path(__file__).parent


async def start_instance(instance_id: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "ipc_cli", "--nats-url", URL),  # the ``ipc`` command
        *("run", "service_b:service_b", "--app-dir", str(EXAMPLES)),
        "--instance-id",
        instance_id,
        "--resources",
        "acc_XYZ",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    print(f"  {line.decode().strip()}")
    return proc


async def book(caller: IPCClient, n: int) -> WorkResult:
    order = WorkRequest(
        account="acc_XYZ", quantity=n, price=Decimal("187.25"), placed_at=datetime.now(UTC)
    )
    return await caller.call(
        "service_b.do_work",
        order,
        resource_id="acc_XYZ",
        timeout=10.0,  # longer than the failover window (about 1.5 s): no error, a result
        returns=WorkResult,
        call_id=f"order-{uuid.uuid4().hex[:12]}",
    )


async def main() -> None:
    print("starting two instances of service_b:")
    b1 = await start_instance("b1")
    b2 = await start_instance("b2")
    try:
        async with IPCClient(URL, name="svc_a") as caller:
            for n in range(1, 4):
                print(f"order {n}: booked by {(await book(caller, n)).booked_by}")
            b1.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            print("killed b1 (kill -9)")
            result = await book(caller, 4)
            waited = time.monotonic() - killed
            print(f"order 4: booked by {result.booked_by}, {waited:.2f}s after the kill")
            for n in range(5, 7):
                print(f"order {n}: booked by {(await book(caller, n)).booked_by}")
    finally:
        for proc in (b1, b2):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)  # a planned stop hands over first
                await proc.wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except IPCError as e:
        raise SystemExit(f"workflow2: {e}") from None
