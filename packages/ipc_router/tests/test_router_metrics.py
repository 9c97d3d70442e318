"""The router's HTTP port: ``/metrics`` after real calls, ``/healthz`` and ``/readyz`` for a
leader, a standby and a router whose NATS died; and the bounds on label values."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.samples import Sample

from ipc_client_sdk import IPCClient, RemoteError
from ipc_client_sdk.protocol import CallReply, Codec, ErrorCode, ErrorInfo
from ipc_router.api.app import Router
from ipc_router.api.config import RouterConfig, parse_config
from ipc_router.application.ports import CallsBacklog
from ipc_router.domain import InstanceRecord, Role, RoleEvent
from ipc_router.infrastructure.prometheus import (
    OTHER,
    ROUTER_METRICS,
    PrometheusRouterMetrics,
    reply_outcome,
)
from ipc_testing import NatsServerProcess, RouterProcess, eventually, free_port
from ipc_testing.fakes import make_instance
from ipc_testing.instance import InstanceProcess
from ipc_testing.metrics import parse, value
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

DOCKERFILE_TEXT = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()

pytestmark = pytest.mark.slow  # in-process routers with their timers


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """One request to the router's HTTP port: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


async def scrape(port: int) -> dict[str, list[Sample]]:
    """``/metrics`` parsed: samples by family name."""
    status, text = await http_get(port, "/metrics")
    assert status == 200, text
    return parse(text)


def work(fail_with: str | None = None) -> WorkRequest:
    return WorkRequest(
        account="acc_1", amount=Decimal("1.5"), placed_at=datetime.now(UTC), fail_with=fail_with
    )


@pytest.fixture
async def router(nats_server: NatsServerProcess, tmp_path: Path) -> AsyncIterator[Router]:
    config = RouterConfig(
        nats_url=nats_server.url, router_id="leader", data_dir=tmp_path, metrics_port=0
    )
    async with Router(config) as router:
        yield router


async def test_metrics_count_the_calls_made(nats_server: NatsServerProcess, router: Router) -> None:
    port = router.http_port
    assert port
    svc = CountingService()
    async with IPCClient(nats_server.url, name="b") as server, IPCClient(nats_server.url) as a:
        await server.serve(svc.service, instance_id="b1")
        for _ in range(7):
            await a.call("service_b.do_work", work(), returns=WorkResult, durable=True)
        for fail_with in ("boom", "denied"):
            with pytest.raises(RemoteError):
                await a.call("service_b.do_work", work(fail_with), durable=True)
        with pytest.raises(RemoteError):  # not a method of the service: refused by the router
            await a.call("service_b.no_such", work(), durable=True)
        with pytest.raises(Exception):  # noqa: B017  # nobody serves it
            await a.call("nobody.work", work(), durable=True, timeout=1)

        async def reported() -> dict[str, list[Sample]]:
            # The instance answers its callers and reports the counts with its heartbeats.
            found = await scrape(port)
            served = [s.value for s in found["ipc_router_calls"] if s.name.endswith("_total")]
            assert sum(served) == 11, served
            return found

        metrics = await eventually(reported, within=10)

    calls = metrics["ipc_router_calls"]
    total = "ipc_router_calls_total"
    assert value(calls, total, service="service_b", method="do_work", outcome="ok") == 7
    assert value(calls, total, service="service_b", method="do_work", outcome="internal") == 1
    denied = value(calls, total, service="service_b", method="do_work", outcome="permission_denied")
    assert denied == 1
    # names the registry does not know never become label values
    assert value(calls, total, service=OTHER, method=OTHER, outcome="not_found") == 1
    assert value(calls, total, service=OTHER, method=OTHER, outcome="unavailable") == 1
    assert not any("no_such" in str(s.labels) or "nobody" in str(s.labels) for s in calls)

    histogram = metrics["ipc_router_call_duration_seconds"]
    labels = {"service": "service_b", "method": "do_work"}
    count = value(histogram, "ipc_router_call_duration_seconds_count", **labels)
    assert count == 9
    assert 0 < value(histogram, "ipc_router_call_duration_seconds_sum", **labels) < 9 * 5
    buckets = [s for s in histogram if s.name.endswith("_bucket") and s.labels.get("service")]
    inf = [s.value for s in buckets if s.labels == {**labels, "le": "+Inf"}]
    assert inf == [9]
    mine = [s.value for s in buckets if s.labels["service"] == "service_b"]
    assert mine == sorted(mine)  # cumulative

    assert value(metrics["ipc_router_leader"], "ipc_router_leader") == 1
    assert value(metrics["ipc_router_calls_in_flight"], "ipc_router_calls_in_flight") == 0
    instances = metrics["ipc_router_instances"]
    healthy_active = {"service": "service_b", "role": "active", "health": "healthy"}
    assert value(instances, "ipc_router_instances", **healthy_active) == 1
    assert value(metrics["ipc_router_calls_pending"], "ipc_router_calls_pending") == 0
    assert value(metrics["ipc_router_calls_unacked"], "ipc_router_calls_unacked") == 0
    assert value(metrics["ipc_router_redeliveries"], "ipc_router_redeliveries_total") == 0
    missed = metrics["ipc_router_heartbeats_missed"]
    assert value(missed, "ipc_router_heartbeats_missed_total") == 0
    exposed = {s.name for samples in metrics.values() for s in samples}
    for name in ROUTER_METRICS:
        if name != "ipc_router_failovers_total":  # appears with its first failover
            assert any(e.startswith(name) for e in exposed), name


async def test_failover_and_missed_heartbeats_are_counted(
    router: Router, instance_pair: tuple[InstanceProcess, InstanceProcess]
) -> None:
    port = router.http_port
    assert port
    b1, _ = instance_pair
    b1.pause()  # silent: its heartbeats stop, b2 takes its roles over

    async def failed_over() -> dict[str, list[Sample]]:
        metrics = await scrape(port)
        missed = metrics["ipc_router_heartbeats_missed"]
        assert value(missed, "ipc_router_heartbeats_missed_total") == 1
        return metrics

    metrics = await eventually(failed_over, within=10, retry_on=(AssertionError, KeyError))
    failovers = metrics["ipc_router_failovers"]
    total = "ipc_router_failovers_total"
    # the service's active role and the claimed resource's each moved once
    assert value(failovers, total, service="service_b", reason="failover") == 2
    instances = metrics["ipc_router_instances"]
    for role, health in (("active", "healthy"), ("standby", "unhealthy")):
        labels = {"service": "service_b", "role": role, "health": health}
        assert value(instances, "ipc_router_instances", **labels) == 1


async def test_probes_of_leader_standby_and_a_router_without_nats(
    nats_server: NatsServerProcess, router: Router, tmp_path: Path
) -> None:
    port = router.http_port
    assert port
    assert await http_get(port, "/healthz") == (200, "ok\n")
    assert await http_get(port, "/readyz") == (200, "ok\n")
    assert (await http_get(port, "/nope"))[0] == 404
    assert (await http_get(port, "/metrics", "POST"))[0] == 405
    assert (await http_get(port, "/healthz", "HEAD")) == (200, "")

    config = RouterConfig(
        nats_url=nats_server.url, router_id="standby", data_dir=tmp_path / "s", metrics_port=0
    )
    async with Router(config) as standby:
        other = standby.http_port
        assert other and other != port
        assert await http_get(other, "/readyz") == (200, "ok\n")  # a ready standby
        metrics = await scrape(other)
        assert value(metrics["ipc_router_leader"], "ipc_router_leader") == 0
        assert not metrics["ipc_router_instances"]  # the leader reports them

        nats_server.kill()

        async def down(p: int) -> None:
            assert await http_get(p, "/healthz") == (503, "not connected to NATS\n")

        for p in (port, other):
            await eventually(lambda p=p: down(p), within=10)  # type: ignore[misc]
            status, why = await http_get(p, "/readyz")
            assert status == 503 and why.strip(), why


async def test_the_flag_serves_metrics_from_a_router_process(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    port = free_port()
    async with RouterProcess(
        nats_server.url, tmp_path / "r.log", args=("--metrics-port", str(port))
    ):
        assert await http_get(port, "/readyz") == (200, "ok\n")
        metrics = await scrape(port)
        assert value(metrics["ipc_router_leader"], "ipc_router_leader") == 1


def test_metrics_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config([]).metrics_port is None
    assert parse_config([]).metrics_host == "127.0.0.1"
    monkeypatch.setenv("IPC_METRICS_PORT", "9464")
    monkeypatch.setenv("IPC_METRICS_HOST", "0.0.0.0")
    config = parse_config([])
    assert (config.metrics_port, config.metrics_host) == (9464, "0.0.0.0")
    assert parse_config(["--metrics-port", "9999"]).metrics_port == 9999
    with pytest.raises(SystemExit):
        parse_config(["--metrics-port", "70000"])


class FakeState:
    """A ``RouterState`` with a fixed table."""

    def __init__(self, *records: InstanceRecord) -> None:
        self.records = list(records)
        self.leading = True

    def instances(self) -> list[InstanceRecord]:
        return self.records

    def calls_in_flight(self) -> int:
        return 3

    def knows(self, service: str, method: str) -> bool:
        return any(r.service == service for r in self.records) and method == "m"

    async def calls_backlog(self) -> CallsBacklog | None:
        return CallsBacklog(pending=5, unacked=2)


def ok() -> bytes:
    return Codec().encode_envelope(CallReply(call_id="c", payload=b"error"))


async def test_label_values_are_capped_and_unknown_names_are_other() -> None:
    metrics = PrometheusRouterMetrics(max_label_sets=2)
    metrics.observe(FakeState(make_instance("s1", "i1", at=0.0)))
    for service in ("s1", "s2", "s3", "s4"):
        metrics.call_answered(service, "m", ok(), 0.001)
    metrics.call_refused("s1", "m", ErrorCode.UNAVAILABLE, 0.001)
    metrics.call_refused("forged-name", "m", ErrorCode.UNAVAILABLE, 0.001)
    metrics.instance_event(RoleEvent("s9", "i9", Role.ACTIVE, 2, "failover"))
    metrics.instance_event(RoleEvent("s1", "i1", Role.ACTIVE, 2, "registered"))  # not one
    text, _ = await metrics.exposition()
    families = parse(text.decode())
    calls = families["ipc_router_calls"]
    services = {s.labels["service"] for s in calls if s.name.endswith("_total")}
    assert services == {"s1", "s2", OTHER}
    total = "ipc_router_calls_total"
    assert value(calls, total, service=OTHER, method=OTHER, outcome="ok") == 2
    assert value(calls, total, service=OTHER, method=OTHER, outcome="unavailable") == 1
    assert value(calls, total, service="s1", method="m", outcome="unavailable") == 1
    failovers = families["ipc_router_failovers"]
    assert [s.labels for s in failovers if s.name.endswith("_total")] == [
        {"service": OTHER, "reason": "failover"}
    ]
    assert value(families["ipc_router_calls_in_flight"], "ipc_router_calls_in_flight") == 3
    assert value(families["ipc_router_calls_pending"], "ipc_router_calls_pending") == 5


def test_reply_outcome_reads_only_the_error_code() -> None:
    codec = Codec()
    assert reply_outcome(ok()) == "ok"  # "error" in the payload bytes is not an error
    failed = CallReply(call_id="c", error=ErrorInfo(code=ErrorCode.ABORTED, message="x"))
    assert reply_outcome(codec.encode_envelope(failed)) == "aborted"
    assert reply_outcome(b"\x81\xa5error\x81\xa4code\xa3bad") == "other"
    assert reply_outcome(b"error but not msgpack \xc1") == "other"


async def test_the_images_health_check_passes_on_a_ready_router(router: Router) -> None:
    """The Dockerfile's HEALTHCHECK command, run as the container runs it."""
    text = DOCKERFILE_TEXT
    line = text[text.index("HEALTHCHECK") :].split("CMD", 1)[1].split("\n", 1)[0]
    argv = json.loads(line)
    env = {**os.environ, "IPC_METRICS_PORT": str(router.http_port)}
    check = await asyncio.create_subprocess_exec(sys.executable, *argv[1:], env=env)
    assert await check.wait() == 0
    env["IPC_METRICS_PORT"] = str(free_port())  # nothing listens: unhealthy
    check = await asyncio.create_subprocess_exec(
        sys.executable, *argv[1:], env=env, stderr=asyncio.subprocess.DEVNULL
    )
    assert await check.wait() != 0
