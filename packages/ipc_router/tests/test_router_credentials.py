"""The router's credentials: flags and variables, and a refusal that exits 3 with one line
and no secret."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ipc_client_sdk import Credentials
from ipc_router.api.app import Router
from ipc_router.api.config import RouterConfig, build_parser, parse_config
from ipc_router.api.main import run
from ipc_testing import NatsServerConfig, NatsServerProcess
from ipc_testing.auth import new_nkey_user, users_block

SECRET = "s3cr3t-Pa55"

pytestmark = pytest.mark.usefixtures("no_credential_variables")


def test_flags_and_variables_make_the_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config([]).credentials.empty  # embedded mode: none, as before
    monkeypatch.setenv("IPC_NATS_NKEY", "/run/secrets/router.nk")
    monkeypatch.setenv("IPC_TLS_CA", "/etc/ipc/ca.pem")
    config = parse_config([])
    assert config.credentials.nkey_seed_file == Path("/run/secrets/router.nk")
    assert config.credentials.tls_ca == Path("/etc/ipc/ca.pem")
    config = parse_config(["--nats-nkey", "other.nk", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
    assert config.credentials.nkey_seed_file == Path("other.nk")  # the flag wins
    assert config.credentials.tls_cert == Path("c.pem")


def test_url_credentials_are_lifted_out_of_the_url() -> None:
    config = parse_config(["--nats-url", f"nats://alice:{SECRET}@h1:4222,nats://alice:{SECRET}@h2"])
    assert config.nats_url == "nats://h1:4222,nats://h2"
    assert (config.credentials.user, config.credentials.password) == ("alice", SECRET)
    assert SECRET not in repr(config)


@pytest.mark.parametrize(
    "argv",
    [
        ["--nats-token", "t", "--nats-nkey", "a.nk"],
        ["--nats-user", "alice"],
        ["--nats-url", "nats://a:b@h", "--nats-token", "t"],
    ],
)
def test_conflicting_credentials_exit_2_with_one_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("ipc-router: error:")


def test_help_names_the_variables_never_their_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPC_NATS_PASSWORD", SECRET)
    monkeypatch.setenv("IPC_NATS_USER", "alice")
    text = build_parser().format_help()
    assert "IPC_NATS_PASSWORD" in text and "IPC_TLS_KEY" in text
    assert SECRET not in text


@pytest.fixture
async def nkey_server(tmp_path: Path) -> AsyncIterator[NatsServerProcess]:
    router_key = new_nkey_user(tmp_path / "keys", "router")
    server = NatsServerProcess(
        NatsServerConfig(
            store_dir=tmp_path / "nats",
            port=0,
            extra=users_block(router_key, passwords={"alice": SECRET}),
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "credentials",
    [Credentials(), Credentials(user="alice", password=SECRET + "-wrong")],
    ids=["none", "wrong-password"],
)
async def test_refused_credentials_exit_3_with_one_line(
    credentials: Credentials,
    nkey_server: NatsServerProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = RouterConfig(
        nats_url=nkey_server.url,
        data_dir=tmp_path / "data",
        connect_timeout=10,
        credentials=credentials,
    )
    assert await run(config) == 3
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and "\n" not in failures[0], failures
    assert "UNAUTHENTICATED" in failures[0] and "refused" in failures[0]
    assert SECRET not in caplog.text


async def test_router_connects_with_its_password(
    nkey_server: NatsServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = nkey_server.url.replace("nats://", f"nats://alice:{SECRET}@")
    config = parse_config(["--nats-url", url, "--data-dir", str(tmp_path / "data")])
    async with Router(config) as router:
        assert router.nats_url == nkey_server.url
    assert "credentials: user alice" in caplog.text
    assert SECRET not in caplog.text
