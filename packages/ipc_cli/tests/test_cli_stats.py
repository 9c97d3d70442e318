"""``ipc stats``: after real calls through a real router, the figures match the calls made,
in ``--json`` and as a table."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ipc_cli._exit import ExitCode
from ipc_cli.main import app
from ipc_client_sdk import IPCClient, RemoteError
from ipc_testing import NatsServerProcess, RouterProcess, eventually
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

runner = CliRunner(env={"COLUMNS": "200"})


async def ipc(url: str, *args: str) -> Result:
    return await asyncio.to_thread(lambda: runner.invoke(app, ["--nats-url", url, *args]))


def work(fail_with: str | None = None) -> WorkRequest:
    return WorkRequest(
        account="acc_1", amount=Decimal("1"), placed_at=datetime.now(UTC), fail_with=fail_with
    )


async def test_stats_count_the_calls_made(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    url = nats_server.url
    empty = await ipc(url, "stats")
    assert empty.exit_code == ExitCode.OK, empty.stderr
    assert "no calls counted" in empty.stdout

    svc = CountingService()
    async with IPCClient(url, name="b") as server, IPCClient(url) as caller:
        await server.serve(svc.service, instance_id="b1")
        for _ in range(6):
            await caller.call("service_b.do_work", work(), returns=WorkResult, durable=True)
        for fail_with in ("boom", "boom", "denied"):
            with pytest.raises(RemoteError):
                await caller.call("service_b.do_work", work(fail_with), durable=True)
        with pytest.raises(RemoteError):  # refused by the router: counted under _other
            await caller.call("service_b.no_such", work(), durable=True)

        async def reported() -> dict[str, Any]:
            # The instance answers its callers and reports the counts with its heartbeats.
            stats = await ipc(url, "stats", "--json")
            assert stats.exit_code == ExitCode.OK, stats.stderr
            counted: dict[str, Any] = json.loads(stats.stdout)
            assert sum(m["total"]["calls"] for m in counted["methods"]) == 10, counted
            return counted

        found = await eventually(reported, within=10)
        mine = await caller.admin.stats("service_b")
        table = await ipc(url, "stats", "service_b")

    assert found["led_s"] > 0
    by_name = {(m["service"], m["method"]): m for m in found["methods"]}
    total = by_name[("service_b", "do_work")]["total"]
    assert (total["calls"], total["errors"]) == (9, 3)
    assert total["error_rate"] == pytest.approx(3 / 9)
    assert total["outcomes"] == {"ok": 6, "internal": 2, "permission_denied": 1}
    assert 0 < total["p50_s"] <= total["p90_s"] <= total["p99_s"]
    assert total["rate"] == pytest.approx(9 / found["led_s"], rel=0.5)
    assert by_name[("_other", "_other")]["total"]["outcomes"] == {"not_found": 1}

    assert [(m.service, m.method) for m in mine.methods] == [("service_b", "do_work")]
    assert mine.methods[0].total.calls == 9

    assert table.exit_code == ExitCode.OK, table.stderr
    assert "service_b.do_work" in table.stdout and "_other" not in table.stdout
    row = next(line for line in table.stdout.splitlines() if "service_b.do_work" in line)
    assert "33.3%" in row  # 3 errors of 9


async def test_stats_of_a_service_without_calls(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    result = await ipc(nats_server.url, "stats", "nobody", "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert json.loads(result.stdout)["methods"] == []
    bad = await ipc(nats_server.url, "stats", "not a name")
    assert bad.exit_code == ExitCode.USAGE, (bad.stdout, bad.stderr)
