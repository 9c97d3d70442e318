"""Dockerfile and docker-compose.yaml cannot be run here; check them against the code, and
the NATS node configuration against the real nats-server (``-t``: configuration test)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from ipc_cli.main import app as ipc_app
from ipc_router.api.config import build_parser
from ipc_router.infrastructure.nats_server import find_nats_server
from ipc_testing.auth import new_nkey_user, users_block

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "packages" / "ipc_router" / "Dockerfile"
NODE_CONF = ROOT / "deploy" / "nats" / "nats.conf"
DEPLOY_README = ROOT / "deploy" / "README.md"
GENERATED = ROOT / "deploy" / "auth"
"""Written by ``ipc auth`` (never committed): mounts from here need not exist in the repo."""

NODES = ("nats-1", "nats-2", "nats-3")
ROUTERS = ("router-1", "router-2")


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def console_scripts(package: str) -> dict[str, str]:
    project = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())
    scripts: dict[str, str] = project["project"]["scripts"]
    return scripts


def router_env_vars() -> set[str]:
    return set(re.findall(r"\benv\s+(IPC_[A-Z_]+)", build_parser().format_help())) | set(
        re.findall(
            r'env\("(IPC_[A-Z_]+)"',
            (ROOT / "packages/ipc_router/ipc_router/api/config.py").read_text(),
        )
    )


def binds(service: dict[str, Any]) -> dict[str, tuple[Path, bool]]:
    """A service's bind mounts: target -> (source on the host, read-only), both syntaxes."""
    found: dict[str, tuple[Path, bool]] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume["type"] == "bind":
                found[volume["target"]] = (ROOT / volume["source"], bool(volume["read_only"]))
            continue
        source, target, *mode = volume.split(":")
        if source.startswith("."):  # a named volume otherwise
            found[target] = (ROOT / source, mode == ["ro"])
    return found


def nats_minor(version: str) -> str:
    found = re.search(r"(\d+)\.(\d+)", version)
    assert found, version
    return f"{found[1]}.{found[2]}"


def test_compose_runs_three_nats_nodes_and_two_routers() -> None:
    assert set(services()) == {*NODES, *ROUTERS}
    binary = subprocess.run(
        [str(find_nats_server()), "--version"], capture_output=True, text=True, check=True
    )
    for name in NODES:
        node = services()[name]
        # the nats-server the tests run is the one the cluster runs
        assert node["image"] == f"nats:{nats_minor(binary.stdout)}-alpine", node["image"]
        assert node["command"] == ["-c", "/etc/nats/nats.conf"]
        assert node["environment"] == {"NATS_SERVER_NAME": name}
        assert "healthz" in " ".join(node["healthcheck"]["test"])
        mounts = binds(node)
        assert mounts["/etc/nats/nats.conf"] == (NODE_CONF, True)
        assert mounts["/etc/nats/authorization.conf"] == (GENERATED / "authorization.conf", True)


def test_node_config_clusters_the_three_nodes_with_jetstream() -> None:
    text = NODE_CONF.read_text()
    assert "server_name: $NATS_SERVER_NAME" in text
    assert re.search(r"jetstream\s*\{", text)
    routes = set(re.findall(r'"nats://([\w-]+):6222"', text))
    assert routes == set(NODES)
    assert 'include "authorization.conf"' in text
    assert "authorization {" not in text  # who may do what is generated, never hand-written


def test_every_published_port_is_bound_to_loopback() -> None:
    published = 0
    for name, service in services().items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
    assert published >= 3  # each node's client port, for the SDK and the CLI on the host


def test_routers_run_flags_and_variables_the_code_reads() -> None:
    cluster = {f"nats://{node}:4222" for node in NODES}
    for name in ROUTERS:
        router = services()[name]
        ns = build_parser().parse_args(router["command"])  # exits on an unknown flag
        assert ns.replicas == 3 and ns.router_id == name
        env = router["environment"]
        assert set(env) <= router_env_vars()
        assert set(env["IPC_NATS_URL"].split(",")) == cluster
        mounts = binds(router)
        assert mounts[env["IPC_NATS_NKEY"]] == (GENERATED / "router.nk", True)
        assert {n: c["condition"] for n, c in router["depends_on"].items()} == dict.fromkeys(
            NODES, "service_healthy"
        )
        # the probe asks this router's own HTTP port whether it is ready
        port = int(env["IPC_METRICS_PORT"])
        probe = " ".join(router["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in probe, probe
        assert probe.startswith("CMD python -c ")  # the image has python, not wget or curl
        build = router["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert "ports" not in router  # nothing of a router's is reached from outside


def test_mounts_are_in_the_repository_or_documented_as_generated() -> None:
    documented = DEPLOY_README.read_text()
    for name, service in services().items():
        for target, (source, read_only) in binds(service).items():
            assert read_only, (name, target)
            if source.is_relative_to(GENERATED):
                assert source.name in documented, f"{source.name} is not in deploy/README.md"
                assert "ipc auth init" in documented
            else:
                assert source.is_file(), (name, source)
    assert "deploy/auth/" in (ROOT / ".gitignore").read_text()  # seeds are never committed


def test_dockerfile_runs_commands_that_exist() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["ipc-router"]' in text
    assert "ipc-router" in console_scripts("ipc_router")
    assert "ipc" in console_scripts("ipc_cli")
    for path in re.findall(r"COPY (packages/\S+)", text):
        assert (ROOT / path).is_dir(), path
    assert "IPC_NATS_URL=nats://nats:4222" in text
    assert "uv.lock" not in text
    for var in re.findall(r"\b(IPC_[A-Z_]+)=", text):
        assert var in router_env_vars(), var
    # the health check asks the metrics port the image turns on whether it is ready
    assert "IPC_METRICS_PORT=9464" in text and "EXPOSE 9464" in text
    check = text[text.index("HEALTHCHECK") :]
    assert '"python", "-c"' in check and "/readyz" in check and "IPC_METRICS_PORT" in check


def test_node_config_passes_nats_servers_own_check(tmp_path: Path) -> None:
    """``nats-server -t`` on the node configuration, laid out as the containers see it,
    with an authorization block of NKey users in place of the generated one."""
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(NODE_CONF, etc / "nats.conf")
    router = new_nkey_user(tmp_path / "keys", "router")
    (etc / "authorization.conf").write_text(users_block(router))
    for node in NODES:
        checked = nats_server_check(etc / "nats.conf", node)
        assert checked.returncode == 0, checked.stderr
        assert "is valid" in checked.stdout + checked.stderr
    # a node without a name is refused, not nameless
    assert nats_server_check(etc / "nats.conf", None).returncode != 0


def nats_server_check(conf: Path, node: str | None) -> subprocess.CompletedProcess[str]:
    """``nats-server -t -c conf`` as node ``node`` (None: with no name in the environment)."""
    env = {k: v for k, v in os.environ.items() if k != "NATS_SERVER_NAME"}
    if node is not None:
        env["NATS_SERVER_NAME"] = node
    return subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def has_ipc_auth() -> bool:
    """Whether this checkout's ``ipc`` has the ``auth`` commands."""
    commands: dict[str, object] = getattr(typer.main.get_command(ipc_app), "commands", {})
    return "auth" in commands


def test_node_config_passes_the_check_with_what_ipc_auth_generates(tmp_path: Path) -> None:
    """The same check with ``ipc auth init`` + ``add-service`` output, mounted as the
    compose file mounts it."""
    if not has_ipc_auth():
        pytest.skip("ipc auth is not in this checkout")
    auth = tmp_path / "auth"
    runner = CliRunner()
    for argv in (["auth", "init", str(auth)], ["auth", "add-service", str(auth), "service_b"]):
        result = runner.invoke(ipc_app, argv)
        assert result.exit_code == 0, result.output
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(NODE_CONF, etc / "nats.conf")
    shutil.copy(auth / "authorization.conf", etc / "authorization.conf")
    assert (auth / "router.nk").is_file()
    checked = nats_server_check(etc / "nats.conf", "nats-1")
    assert checked.returncode == 0, checked.stderr
