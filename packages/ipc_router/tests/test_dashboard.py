"""The Grafana dashboard in deploy/grafana queries only series the code registers, with
labels those series have."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ipc_client_sdk._metrics import CLIENT_METRICS, PrometheusClientMetrics
from ipc_router.application.ports import CallsBacklog
from ipc_router.domain import InstanceRecord, Role, RoleEvent
from ipc_router.infrastructure.prometheus import ROUTER_METRICS, PrometheusRouterMetrics
from ipc_testing.fakes import make_instance

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "aegis-ipc.json"
_SERIES = re.compile(r"\b(ipc_[a-z_]+)\b")
_BY = re.compile(r"\bby \(([^)]*)\)")
_MATCHER = re.compile(r"\{([^}]*)\}")


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


class OneInstance:
    """A ``RouterState``: a leader with one instance and a backlog."""

    leading = True

    def instances(self) -> list[InstanceRecord]:
        return [make_instance("svc", "i1")]

    def calls_in_flight(self) -> int:
        return 1

    def knows(self, service: str, method: str) -> bool:
        return True

    async def calls_backlog(self) -> CallsBacklog | None:
        return CallsBacklog(pending=1, unacked=1)


async def exposed() -> dict[str, set[str]]:
    """Every sample name the router and a client expose once each series was used, with
    its label names."""
    router = PrometheusRouterMetrics()
    router.observe(OneInstance())
    router.call_answered("svc", "m", b"", 0.01)
    router.call_redelivered()
    router.heartbeats_missed(1)
    router.instance_event(RoleEvent("svc", "i1", Role.ACTIVE, 2, "failover"))
    registry = CollectorRegistry()
    client = PrometheusClientMetrics(registry)
    client.call_done("svc", "m", False, "ok", 0.01)
    client.handler_done("svc", "m", 0.01)
    client.event_published()
    client.event_handled("ok")
    client.dead_lettered()
    pages = [(await router.exposition())[0], generate_latest(registry)]
    labels: dict[str, set[str]] = {}
    for page in pages:
        for family in text_string_to_metric_families(page.decode()):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


async def test_every_queried_series_is_registered_with_its_labels() -> None:
    known = await exposed()
    queried: set[str] = set()
    for expr in expressions():
        series = set(_SERIES.findall(expr))
        assert series, expr
        for name in series:
            assert name in known, f"{name} is not a series the code registers ({expr})"
            queried.add(name.removesuffix("_bucket"))
        usable = set().union(*(known[name] for name in series)) | {"le"}
        for group in _BY.findall(expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in usable, f"{label} is not a label of {series} ({expr})"
        for matcher in _MATCHER.findall(expr):
            label = re.split(r"[!=~]", matcher, maxsplit=1)[0].strip()
            assert label in usable, f"{label} is not a label of {series} ({expr})"
    # the name lists are what the code exposes, and the dashboard shows each of them
    listed = set(ROUTER_METRICS + CLIENT_METRICS)
    assert {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in known} >= listed
    assert listed <= queried, listed - queried
