"""Conformance: a Node.js client written from docs/protocol.md alone talks to Python services.

It makes a durable call with a decimal and a ``Date`` (sent as MessagePack's standard
timestamp), a direct call, and publishes an event that a Python subscriber receives. The
npm packages (``nats``, ``@msgpack/msgpack``) are installed once into a folder under the
system's temp directory, keyed by the package list, and reused by later runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ipc_client_sdk import CallContext, Service
from ipc_client_sdk.testing import IPCStack

pytestmark = pytest.mark.slow

CLIENT = Path(__file__).with_name("conformance") / "client.mjs"
PACKAGE = {
    "name": "ipc-conformance",
    "version": "0.0.0",
    "private": True,
    "dependencies": {"nats": "^2.29.0", "@msgpack/msgpack": "^3.1.0"},
}


def _node_project() -> Path:
    """A folder with the npm packages installed (cached across runs), or skip saying why."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the conformance test needs node and npm on PATH")
    spec = json.dumps(PACKAGE, sort_keys=True)
    key = hashlib.sha256(spec.encode()).hexdigest()[:12]
    home = Path(tempfile.gettempdir()) / f"ipc-node-conformance-{key}"
    if not (home / "node_modules" / "nats").is_dir():
        staging = Path(tempfile.mkdtemp(prefix="ipc-node-conformance-"))
        (staging / "package.json").write_text(spec)
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=staging,
                capture_output=True,
                text=True,
                timeout=180,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.skip("npm install of nats and @msgpack/msgpack took over 180 s")
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.skip(f"npm install of nats and @msgpack/msgpack failed: {done.stderr[-500:]}")
        try:
            staging.rename(home)  # atomic: a parallel run finds all or nothing
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another run won the race
    shutil.copy(CLIENT, home / CLIENT.name)  # ES modules resolve packages beside the script
    return home


class Order(BaseModel):
    account: str
    quantity: int
    price: Decimal
    placed_at: datetime


class Booked(BaseModel):
    account: str
    notional: Decimal
    placed_at: datetime
    booked_by: str


class Tick(BaseModel):
    symbol: str
    price: Decimal
    at: datetime


conformance = Service("conformance")
received: list[Order] = []


@conformance.method("book")
async def book(order: Order, ctx: CallContext) -> Booked:
    received.append(order)
    return Booked(
        account=order.account,
        notional=order.price * order.quantity,
        placed_at=order.placed_at,
        booked_by=ctx.instance_id,
    )


@conformance.method("quote", durable=False)
async def quote(req: dict[str, str], ctx: CallContext) -> dict[str, Any]:
    return {"symbol": req["symbol"], "bid": Decimal("186.99"), "by": ctx.instance_id}


async def test_a_node_client_written_from_the_spec_calls_and_publishes(
    ipc_stack: IPCStack,
) -> None:
    project = _node_project()
    received.clear()
    ticks: list[Tick] = []

    async def on_tick(tick: Tick) -> None:
        ticks.append(tick)

    await ipc_stack.serve(conformance, instance_id="c1")
    async with ipc_stack.client("py-subscriber") as subscriber:
        await subscriber.subscribe("conformance.ticks.*", on_tick, model=Tick)
        node = await asyncio.create_subprocess_exec(
            "node",
            str(project / CLIENT.name),
            ipc_stack.url,
            cwd=project,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        out, err = await asyncio.wait_for(node.communicate(), 60)
        assert node.returncode == 0, err.decode()[-3000:]
        seen = json.loads(out)
        await ipc_stack.until(lambda: len(ticks) == 1)

    # Durable: the decimal arrived exact, the Date as an aware UTC datetime, both came back.
    sent_at = datetime(2026, 11, 28, 9, 30, 0, 123000, tzinfo=UTC)
    assert received == [
        Order(account="acc_node", quantity=3, price=Decimal("187.2500"), placed_at=sent_at)
    ]
    assert received[0].placed_at.utcoffset() is not None
    durable = seen["durable"]
    assert durable["stream"] == "IPC_CALLS"
    assert durable["result"]["notional"] == "561.7500"
    assert datetime.fromisoformat(durable["result"]["placed_at"]) == sent_at
    assert durable["result"]["booked_by"] == "c1"

    # Direct: straight to the instance, not refused.
    assert seen["direct"]["instance"] == "c1"
    assert not seen["direct"]["refused"]
    assert seen["direct"]["result"] == {"symbol": "AAPL", "bid": "186.99", "by": "c1"}

    # Event: a Python subscriber got it, typed.
    assert seen["published"]["seq"] >= 1
    assert ticks == [
        Tick(symbol="AAPL", price=Decimal("187.0001"), at=datetime(1970, 1, 1, tzinfo=UTC))
    ]
