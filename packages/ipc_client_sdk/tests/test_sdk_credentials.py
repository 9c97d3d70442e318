"""Credentials: NKeys, .creds, user/password, token and TLS against real nats-servers that
require them; refusals fail at once; no secret reaches an error, a log or a repr."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from ipc_client_sdk import (
    AuthenticationError,
    Credentials,
    ErrorCode,
    EventContext,
    InvalidArgumentError,
    IPCClient,
    IPCConnectionError,
    PermissionDeniedError,
)
from ipc_client_sdk.protocol import lift_url_credentials
from ipc_router.api.app import Router
from ipc_router.api.config import RouterConfig
from ipc_testing import NatsCluster, NatsServerConfig, NatsServerProcess, eventually, until
from ipc_testing.auth import (
    NKeyUser,
    make_tls,
    new_jwt_user,
    new_nkey_user,
    tls_block,
    token_block,
    users_block,
)

SECRET = "s3cr3t-Pa55"

pytestmark = pytest.mark.usefixtures("no_credential_variables")


async def _server(tmp_path: Path, extra: str, *, jetstream: bool = True) -> NatsServerProcess:
    server = NatsServerProcess(
        NatsServerConfig(store_dir=tmp_path / "nats", port=0, extra=extra, jetstream=jetstream)
    )
    await server.start()
    return server


@pytest.fixture
async def nkey_server(tmp_path: Path) -> AsyncIterator[tuple[NatsServerProcess, NKeyUser]]:
    user = new_nkey_user(tmp_path / "keys", "svc")
    server = await _server(tmp_path, users_block(user))
    try:
        yield server, user
    finally:
        await server.stop()


@pytest.fixture
async def password_server(tmp_path: Path) -> AsyncIterator[NatsServerProcess]:
    server = await _server(tmp_path, users_block(passwords={"alice": SECRET}))
    try:
        yield server
    finally:
        await server.stop()


# --- the value object -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"token": "t", "nkey_seed_file": "a.nk"}, "an NKey seed file and a token"),
        ({"user": "u", "password": "p", "creds_file": "c"}, "a .creds file and a user"),
        ({"password": "p", "token": "t"}, "a token and a user and password"),
        ({"user": "u"}, "needs a password"),
        ({"tls_cert": "c.pem"}, "needs its key"),
        ({"tls": ssl.create_default_context(), "tls_ca": "ca.pem"}, "not both"),
    ],
)
def test_conflicting_settings_are_refused_at_construction(
    given: dict[str, object], words: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=words):
        Credentials(**given)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        IPCClient(credentials=None if not given else Credentials(**given))  # type: ignore[arg-type]


def test_from_env_reads_every_variable_and_arguments_take_their_place() -> None:
    env = {"IPC_NATS_USER": "alice", "IPC_NATS_PASSWORD": SECRET, "IPC_TLS_CA": "/ca.pem"}
    creds = Credentials.from_env(env)
    assert (creds.user, creds.password, creds.tls_ca) == ("alice", SECRET, Path("/ca.pem"))
    assert Credentials.from_env(env, user="bob").user == "bob"
    assert Credentials.from_env({"IPC_NATS_TOKEN": ""}).empty  # empty means unset
    with pytest.raises(InvalidArgumentError, match="a user and password and a token"):
        Credentials.from_env(env | {"IPC_NATS_TOKEN": "t"})


def test_client_reads_the_variables_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPC_NATS_NKEY", "/run/secrets/svc.nk")
    assert IPCClient().credentials.nkey_seed_file == Path("/run/secrets/svc.nk")
    assert IPCClient(credentials=Credentials()).credentials.empty  # opt out


def test_repr_and_identity_hide_secrets() -> None:
    for creds in (Credentials(user="alice", password=SECRET), Credentials(token=SECRET)):
        assert SECRET not in repr(creds) and SECRET not in creds.identity
        assert SECRET not in repr(RouterConfig(nats_url=None, credentials=creds))
        assert "***" in repr(creds)


def test_url_credentials_move_into_options() -> None:
    urls, creds = lift_url_credentials(
        [f"nats://alice:{SECRET}@h1:4222", f"alice:{SECRET}@h2:4222"], Credentials()
    )
    assert urls == ["nats://h1:4222", "nats://h2:4222"]
    assert (creds.user, creds.password) == ("alice", SECRET)
    assert lift_url_credentials(["nats://tok@h"], Credentials())[1].token == "tok"
    client = IPCClient(f"nats://alice:{SECRET}@h1:4222", credentials=Credentials())
    assert client.servers == ["nats://h1:4222"]
    with pytest.raises(InvalidArgumentError, match="different credentials"):
        lift_url_credentials(["nats://a:b@h1", "nats://c:d@h2"], Credentials())
    with pytest.raises(InvalidArgumentError, match="both in a URL"):
        IPCClient("nats://a:b@h1", credentials=Credentials(token="t"))


@pytest.mark.parametrize(
    ("creds", "words"),
    [
        (Credentials(nkey_seed_file="missing.nk"), "NKey seed file missing.nk: No such file"),
        (Credentials(creds_file="missing.creds"), ".creds file missing.creds: No such file"),
        (Credentials(tls_ca="missing.pem"), "TLS CA bundle missing.pem"),
        (Credentials(tls_cert="c.pem", tls_key="k.pem"), "TLS client certificate c.pem"),
    ],
)
async def test_unusable_files_are_named_before_anything_is_sent(
    creds: Credentials, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    client = IPCClient("nats://127.0.0.1:1", credentials=creds)
    with pytest.raises(AuthenticationError, match=words) as refused:
        await client.connect()
    assert refused.value.code is ErrorCode.UNAUTHENTICATED


async def test_a_file_that_holds_no_seed_is_named_not_quoted(tmp_path: Path) -> None:
    path = tmp_path / "wrong.nk"
    path.write_text(SECRET)
    with pytest.raises(AuthenticationError, match="holds no user seed") as refused:
        await IPCClient(
            "nats://127.0.0.1:1", credentials=Credentials(nkey_seed_file=path)
        ).connect()
    assert str(path) in str(refused.value) and SECRET not in str(refused.value)


# --- against servers that require credentials --------------------------------------------


async def test_nkey_identity_connects_and_strangers_are_refused_at_once(
    nkey_server: tuple[NatsServerProcess, NKeyUser], tmp_path: Path
) -> None:
    server, user = nkey_server
    async with IPCClient(server.url, credentials=Credentials(nkey_seed_file=user.seed_file)):
        pass
    stranger = new_nkey_user(tmp_path / "other", "stranger")
    for creds, words in (
        (Credentials(), "no credentials were given: set IPC_NATS_NKEY"),
        (Credentials(nkey_seed_file=stranger.seed_file), "Authorization Violation"),
    ):
        started = time.monotonic()
        with pytest.raises(AuthenticationError, match=words) as refused:
            await IPCClient(server.url, credentials=creds, connect_timeout=10).connect()
        assert time.monotonic() - started < 3, "refused at once, not after retries"
        assert isinstance(refused.value, IPCConnectionError)
        assert refused.value.code is ErrorCode.UNAUTHENTICATED


async def test_password_from_variables_and_no_secret_in_errors_or_logs(
    password_server: NatsServerProcess,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("IPC_NATS_USER", "alice")
    monkeypatch.setenv("IPC_NATS_PASSWORD", SECRET)
    async with IPCClient(password_server.url) as client:
        assert client.credentials.user == "alice"
    monkeypatch.setenv("IPC_NATS_PASSWORD", SECRET + "-wrong")
    with pytest.raises(AuthenticationError) as refused:
        await IPCClient(password_server.url).connect()
    # in the URL, the password is lifted out and still never shown
    host = password_server.url.removeprefix("nats://")
    monkeypatch.delenv("IPC_NATS_USER")
    monkeypatch.delenv("IPC_NATS_PASSWORD")
    url_client = IPCClient(f"nats://alice:{SECRET}x@{host}")
    with pytest.raises(AuthenticationError) as in_url:
        await url_client.connect()
    for text in (str(refused.value), str(in_url.value), caplog.text, repr(url_client.servers)):
        assert SECRET not in text
    async with IPCClient(f"nats://alice:{SECRET}@{host}") as client:
        assert SECRET not in repr(client.servers) + repr(client.credentials)


async def test_token_identity(tmp_path: Path) -> None:
    server = await _server(tmp_path, token_block(SECRET))
    try:
        async with IPCClient(server.url, credentials=Credentials(token=SECRET)):
            pass
        with pytest.raises(AuthenticationError) as refused:
            await IPCClient(server.url, credentials=Credentials(token="nope")).connect()
        assert SECRET not in str(refused.value)
    finally:
        await server.stop()


async def test_creds_file_on_an_operator_mode_server(tmp_path: Path) -> None:
    user = new_jwt_user(tmp_path / "jwt", "svc")
    server = await _server(tmp_path, user.server_block, jetstream=False)
    try:
        async with IPCClient(server.url, credentials=Credentials(creds_file=user.creds_file)):
            pass
        with pytest.raises(AuthenticationError):
            await IPCClient(server.url, credentials=Credentials()).connect()
    finally:
        await server.stop()


async def test_tls_with_a_test_ca_and_client_certificates(tmp_path: Path) -> None:
    files = make_tls(tmp_path / "tls")
    server = await _server(tmp_path, tls_block(files, verify_clients=True))
    try:
        full = Credentials(tls_ca=files.ca, tls_cert=files.client_cert, tls_key=files.client_key)
        async with IPCClient(server.url, credentials=full):
            pass
        context = ssl.create_default_context(cafile=str(files.ca))
        context.load_cert_chain(str(files.client_cert), str(files.client_key))
        async with IPCClient(server.url, credentials=Credentials(tls=context)):
            pass
        started = time.monotonic()
        with pytest.raises(AuthenticationError, match="TLS"):  # the server is not trusted
            await IPCClient(server.url, credentials=Credentials(), connect_timeout=10).connect()
        assert time.monotonic() - started < 3
        with pytest.raises(IPCConnectionError):  # trusted, but no client certificate
            await IPCClient(
                server.url, credentials=Credentials(tls_ca=files.ca), connect_timeout=1
            ).connect()
    finally:
        await server.stop()


# --- a cluster: credentials outside the URL survive a move to a discovered node ----------


class Tick(BaseModel):
    n: int


@pytest.mark.slow
@pytest.mark.parametrize("where", ["nkey", "password-in-url"])
async def test_credentials_survive_a_reconnect_to_a_discovered_node(
    where: str, tmp_path: Path
) -> None:
    router_key = new_nkey_user(tmp_path / "keys", "router")
    svc = new_nkey_user(tmp_path / "keys", "svc")
    block = users_block(router_key, svc, passwords={"alice": SECRET})
    # NKey credentials as options; or a password written in the URL (lifted into options)
    creds = Credentials(nkey_seed_file=svc.seed_file) if where == "nkey" else Credentials()
    cluster = NatsCluster(tmp_path / "cluster", extra=block)
    await cluster.start()
    config = RouterConfig(
        nats_url=cluster.url,
        replicas=3,
        credentials=Credentials(nkey_seed_file=router_key.seed_file),
    )
    try:
        async with Router(config):
            first = cluster.nodes[0].url
            if where != "nkey":
                first = first.replace("nats://", f"nats://alice:{SECRET}@")
            async with IPCClient(first, name="svc", credentials=creds) as client:
                ticks: list[int] = []

                async def on_tick(tick: Tick, ctx: EventContext) -> None:
                    ticks.append(tick.n)

                await client.subscribe("md.ticks", on_tick, model=Tick, durable="ticks")
                await client.publish("md.ticks", Tick(n=1))
                await until(lambda: ticks == [1])
                cluster.nodes[0].kill()  # the only node the client was told about
                await eventually(lambda: client.publish("md.ticks", Tick(n=2), timeout=2))
                await until(lambda: 2 in ticks, within=15)
                # the router's buckets elect new JetStream leaders meanwhile
                status = await eventually(lambda: client.admin.status(timeout=5), within=30)
                assert status.router_id == config.router_id
    finally:
        await cluster.stop()


async def test_a_refused_operation_raises_and_is_not_also_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    block = (
        'authorization { users: [ { user: "bob", password: "pw", '
        'permissions: { subscribe: { deny: "ipc.pub.md.>" } } } ] }'
    )
    server = await _server(tmp_path, block)
    try:
        creds = Credentials(user="bob", password="pw")
        async with IPCClient(server.url, credentials=creds) as client:

            async def on_tick(tick: Tick) -> None:
                pass

            caplog.set_level(logging.DEBUG, logger="ipc_client_sdk")
            for _ in range(2):  # refused each time, by the operation itself
                with pytest.raises(PermissionDeniedError):
                    await client.subscribe("md.ticks", on_tick, model=Tick)
            assert "violation for subscription" in caplog.text.lower()
            await client.subscribe("ok.ticks", on_tick, model=Tick)  # the connection stays
        refusals = [r for r in caplog.records if "NATS refused an operation" in r.getMessage()]
        # The exception is the report: `ipc` prints one line, not a warning beside it.
        assert refusals and all(r.levelno == logging.DEBUG for r in refusals)
    finally:
        await server.stop()
