"""The product under least privilege (``ipc auth``): Workflow 1, Workflow 2 failover and
pub/sub with a durable subscriber, each identity holding only its own permissions; and
``ipc-router --auth-dir`` running the embedded nats-server with them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

from ipc_client_sdk import AuthenticationError, Credentials, IPCClient
from ipc_client_sdk.protocol import AuthDir, Subjects
from ipc_router.infrastructure.nats_server import free_port
from ipc_testing import RouterProcess, eventually
from ipc_testing.instance import InstanceProcess
from ipc_testing.secured import SecuredStack
from ipc_testing.workload import WorkRequest, WorkResult

pytestmark = pytest.mark.slow


class Tick(BaseModel):
    symbol: str
    price: Decimal


def _work() -> WorkRequest:
    return WorkRequest(account="acc_XYZ", amount=Decimal("7.01"), placed_at=datetime.now(UTC))


async def test_workflows_1_and_2_and_pubsub_under_least_privilege(tmp_path: Path) -> None:
    stack = SecuredStack.create(tmp_path)
    env = stack.env("service_b")
    b1 = InstanceProcess(stack.url, "b1", tmp_path, ("acc_XYZ",), env=env)
    b2 = InstanceProcess(stack.url, "b2", tmp_path, ("acc_XYZ",), env=env)
    try:
        await stack.start()
        await b1.start()
        await b2.start()
        async with stack.client("svc_a") as caller, stack.client("service_b") as feed:
            # Workflow 1: durable and direct, routed by resource.
            for durable in (True, False):
                result = await caller.call(
                    "service_b.do_work",
                    _work(),
                    resource_id="acc_XYZ",
                    returns=WorkResult,
                    durable=durable,
                )
                assert result.instance_id == "b1" and result.amount == Decimal("7.01")
            # The instance acked the durable call it answered (its grant allows the acks of
            # the calls consumer): nothing is left for redelivery.
            observer = await stack.raw("router")
            try:
                js = observer.nc.jetstream()
                subjects = Subjects(stack.auth.load().prefix)

                async def acked() -> None:
                    info = await js.consumer_info(subjects.calls_stream, subjects.calls_consumer)
                    assert (info.num_ack_pending, info.num_redelivered) == (0, 0), info

                await eventually(acked, within=10)
            finally:
                await observer.nc.close()
            # Pub/sub: a plain and a durable subscriber.
            plain: asyncio.Queue[Tick] = asyncio.Queue()
            durable_q: asyncio.Queue[Tick] = asyncio.Queue()

            async def on_plain(t: Tick) -> None:
                await plain.put(t)

            async def on_durable(t: Tick) -> None:
                await durable_q.put(t)

            subs = [
                await caller.subscribe("md.ticks.*", on_plain, model=Tick),
                await caller.subscribe("md.ticks.>", on_durable, model=Tick, durable="audit"),
            ]
            await feed.publish("md.ticks.AAPL", Tick(symbol="AAPL", price=Decimal("1.25")))
            for queue in (plain, durable_q):
                tick = await asyncio.wait_for(queue.get(), 10)
                assert tick.price == Decimal("1.25")
            for sub in subs:
                await sub.stop()
            # Workflow 2: the active dies; the standby takes its calls.
            b1.kill()

            async def served_by_b2() -> WorkResult:
                result = await caller.call(
                    "service_b.do_work", _work(), resource_id="acc_XYZ", returns=WorkResult
                )
                assert result.instance_id == "b2"
                return result

            await eventually(served_by_b2, within=15)
        assert "refused" not in stack.router.log_tail(400), stack.router.log_tail(20)
        assert "refused" not in b2.log_tail(400), b2.log_tail(20)
    finally:
        await b1.stop()
        await b2.stop()
        await stack.stop()


class EmbeddedRouter(RouterProcess):
    """``ipc-router --auth-dir DIR`` with no NATS URL: it runs the nats-server itself."""

    def command(self) -> list[str]:
        return [*super().command()[:3], "--router-id", self.router_id, *self.args]


async def test_router_auth_dir_runs_the_embedded_server_with_its_identities(
    tmp_path: Path,
) -> None:
    auth = AuthDir(tmp_path / "auth")
    port = free_port()
    auth.init(prefix="desk1.ipc", host="127.0.0.1", port=port)
    auth.add_service("service_b")
    router = EmbeddedRouter(
        "",
        tmp_path / "router.log",
        args=(
            "--auth-dir",
            str(auth.path),
            "--prefix",
            "desk1.ipc",
            "--data-dir",
            str(tmp_path / "data"),
        ),
    )
    url = f"nats://127.0.0.1:{port}"
    try:
        await router.start()
        operator = Credentials(nkey_seed_file=auth.seed_file("operator"))
        async with IPCClient(url, credentials=operator, prefix="desk1.ipc") as client:
            status = await client.admin.status()
            assert status.nats.embedded and status.subject_prefix == "desk1.ipc"
        with pytest.raises(AuthenticationError):
            async with IPCClient(url, credentials=Credentials()):
                pass
        log = router.log_tail(200)
        assert "WITHOUT AUTHENTICATION" not in log and "admits only the identities" in log
    finally:
        await router.stop()
