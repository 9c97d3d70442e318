"""``--log-format json``: one JSON object per line, with the structured fields."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from ipc_client_sdk import IPCClient
from ipc_router.infrastructure.logs import JsonFormatter
from ipc_testing import NatsServerProcess, RouterProcess, until
from ipc_testing.workload import CountingService


def test_a_record_is_one_json_line_with_its_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("ipc_router.test_json")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("call %s\nrefused", "c1", extra={"call_id": "c1", "service": "svc"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed", extra={"instance": Path("b1")})  # not JSON: its str
    finally:
        log.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "call c1\nrefused"
    assert (first["level"], first["logger"]) == ("WARNING", "ipc_router.test_json")
    assert (first["call_id"], first["service"]) == ("c1", "svc")
    assert first["timestamp"].endswith("+00:00")
    assert second["instance"] == "b1" and "RuntimeError: boom" in second["exception"]


@pytest.mark.slow
async def test_router_logs_parse_line_by_line(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    log_path = tmp_path / "router.log"
    router = RouterProcess(
        nats_server.url, log_path, args=("--log-format", "json", "--log-level", "DEBUG")
    )
    await router.start()
    try:
        async with IPCClient(nats_server.url, name="svc") as client:
            instance = await client.serve(CountingService().service, instance_id="b1")
            await instance.stop()

            def deregistered() -> bool:
                complete = log_path.read_text().rpartition("\n")[0].splitlines()
                return any("deregistered" in json.loads(line)["message"] for line in complete)

            await until(deregistered)
    finally:
        await router.stop()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]  # every line
    assert all({"timestamp", "level", "logger", "message"} <= set(r) for r in lines)
    about_b1 = [r for r in lines if r.get("instance") == "b1"]
    assert {r["service"] for r in about_b1} == {"service_b"}
    assert any(r["message"].startswith("registered") for r in about_b1)
