"""Opt-in client metrics: calls by path and outcome, handler time, events and dead letters,
counted against what a test did through a real router."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.samples import Sample
from pydantic import BaseModel

from ipc_client_sdk import InvalidArgumentError, IPCClient, RemoteError
from ipc_client_sdk._metrics import CLIENT_METRICS, OTHER, PrometheusClientMetrics
from ipc_testing import NatsServerProcess, RouterProcess
from ipc_testing.metrics import parse, value
from ipc_testing.waiting import until
from ipc_testing.workload import CountingService, WorkRequest, WorkResult


class Tick(BaseModel):
    price: Decimal


def families(registry: CollectorRegistry | None) -> dict[str, list[Sample]]:
    assert registry is not None
    return parse(generate_latest(registry).decode())


def work(fail_with: str | None = None) -> WorkRequest:
    return WorkRequest(
        account="acc_1", amount=Decimal("2"), placed_at=datetime.now(UTC), fail_with=fail_with
    )


def test_metrics_are_off_by_default_and_checked() -> None:
    assert IPCClient().metrics_registry is None
    mine = IPCClient(metrics=True).metrics_registry
    assert (
        isinstance(mine, CollectorRegistry) and mine is not IPCClient(metrics=True).metrics_registry
    )
    given = CollectorRegistry()
    assert IPCClient(metrics=given).metrics_registry is given
    with pytest.raises(InvalidArgumentError):
        IPCClient(metrics="yes")  # type: ignore[arg-type]


async def test_calls_handlers_and_events_are_counted(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    svc = CountingService()
    svc.service.method("quote", durable=False)(svc.do_work)
    async with (
        IPCClient(nats_server.url, name="b", metrics=True) as server,
        IPCClient(nats_server.url, name="a", metrics=True) as caller,
    ):
        await server.serve(svc.service, instance_id="b1")
        for _ in range(4):
            await caller.call("service_b.do_work", work(), returns=WorkResult)
        with pytest.raises(RemoteError):
            await caller.call("service_b.do_work", work("boom"))
        for _ in range(3):  # direct by default (declared durable=False)
            await caller.call("service_b.quote", work(), returns=WorkResult)

        handled: list[Tick] = []

        async def on_tick(tick: Tick) -> None:
            if tick.price < 0:
                raise ValueError("negative price")
            handled.append(tick)

        sub = await server.subscribe("md.ticks.*", on_tick, model=Tick)
        for price in ("1.5", "2.5", "-1"):
            await caller.publish("md.ticks.AAPL", Tick(price=Decimal(price)))
        await caller.publish("md.ticks.AAPL", {"price": "not a number"})
        seen = families(server.metrics_registry)
        await until(lambda: len(handled) == 2)

        def dead_letters() -> float:
            found = families(server.metrics_registry).get("ipc_dead_letters", [])
            return sum(s.value for s in found if s.name == "ipc_dead_letters_total")

        await until(lambda: dead_letters() == 2)  # the failing and the unfit events
        await sub.stop()
        calls = families(caller.metrics_registry)
        served = families(server.metrics_registry)

    total = "ipc_client_calls_total"
    mine = calls["ipc_client_calls"]
    assert (
        value(mine, total, service="service_b", method="do_work", path="durable", outcome="ok") == 4
    )
    failed = {"service": "service_b", "method": "do_work", "path": "durable", "outcome": "internal"}
    assert value(mine, total, **failed) == 1
    assert value(mine, total, service="service_b", method="quote", path="direct", outcome="ok") == 3
    seconds = calls["ipc_client_call_duration_seconds"]
    durable = {"service": "service_b", "method": "do_work", "path": "durable"}
    assert value(seconds, "ipc_client_call_duration_seconds_count", **durable) == 5
    assert value(calls["ipc_events_published"], "ipc_events_published_total") == 4

    handlers = served["ipc_handler_duration_seconds"]
    count = "ipc_handler_duration_seconds_count"
    assert value(handlers, count, service="service_b", method="do_work") == 5
    assert value(handlers, count, service="service_b", method="quote") == 3
    events = served["ipc_events_handled"]
    assert value(events, "ipc_events_handled_total", outcome="ok") == 2
    assert value(events, "ipc_events_handled_total", outcome="error") == 1
    assert value(events, "ipc_events_handled_total", outcome="unfit") == 1
    assert "ipc_events_published" in seen  # registered before the first publish
    exposed = {s.name for samples in (*calls.values(), *served.values()) for s in samples}
    for name in CLIENT_METRICS:
        assert any(e.startswith(name) for e in exposed), name


def test_call_labels_are_capped() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusClientMetrics(registry, max_label_sets=2)
    for service in ("s1", "s2", "s3", "s4"):
        metrics.call_done(service, "m", False, "ok", 0.01)
        metrics.handler_done(service, "m", 0.01)
    samples = families(registry)
    calls = [s for s in samples["ipc_client_calls"] if s.name == "ipc_client_calls_total"]
    assert {s.labels["service"] for s in calls} == {"s1", "s2", OTHER}
    other = {"service": OTHER, "method": OTHER, "path": "durable", "outcome": "ok"}
    assert value(calls, "ipc_client_calls_total", **other) == 2
    handlers = samples["ipc_handler_duration_seconds"]
    count = "ipc_handler_duration_seconds_count"
    assert value(handlers, count, service=OTHER, method=OTHER) == 2
