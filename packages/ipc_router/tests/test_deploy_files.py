"""Dockerfile and docker-compose.yaml cannot be run here; check them against the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from ipc_router.api.config import DEFAULT_EMBEDDED_PORT, build_parser

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "packages" / "ipc_router" / "Dockerfile"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def console_scripts(package: str) -> dict[str, str]:
    project = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())
    scripts: dict[str, str] = project["project"]["scripts"]
    return scripts


def router_env_vars() -> set[str]:
    return set(re.findall(r"\benv (IPC_[A-Z_]+)", build_parser().format_help())) | set(
        re.findall(
            r'env\("(IPC_[A-Z_]+)"',
            (ROOT / "packages/ipc_router/ipc_router/api/config.py").read_text(),
        )
    )


def test_compose_wires_the_router_to_nats() -> None:
    services = compose()["services"]
    assert set(services) == {"nats", "router"}
    nats_cmd = services["nats"]["command"]
    assert "-js" in nats_cmd, "the router needs JetStream"
    assert f"{DEFAULT_EMBEDDED_PORT}:4222" in services["nats"]["ports"]
    router = services["router"]
    assert router["environment"]["IPC_NATS_URL"] == "nats://nats:4222"
    assert set(router["environment"]) <= router_env_vars()
    assert router["depends_on"]["nats"]["condition"] == "service_healthy"
    build = router["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_dockerfile_runs_commands_that_exist() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["ipc-router"]' in text
    assert "ipc-router" in console_scripts("ipc_router")
    assert "ipc" in console_scripts("ipc_cli")
    for path in re.findall(r"COPY (packages/\S+)", text):
        assert (ROOT / path).is_dir(), path
    assert "IPC_NATS_URL=nats://nats:4222" in text
    assert "uv.lock" not in text
