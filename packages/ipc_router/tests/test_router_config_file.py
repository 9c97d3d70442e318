"""``ipc-router --config FILE``: every flag as a TOML key, precedence flag > environment >
file > default, and a bad file refused in one line (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ipc_router import __version__
from ipc_router.api.config import build_parser, parse_config
from ipc_router.api.settings import RouterSettings, env_var

pytestmark = pytest.mark.usefixtures("no_credential_variables")


@pytest.fixture(autouse=True)
def no_router_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for info in RouterSettings.model_fields.values():
        monkeypatch.delenv(env_var(info), raising=False)
    monkeypatch.delenv("IPC_CONFIG", raising=False)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_flag_beats_environment_beats_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write(
        tmp_path / "router.toml",
        'replicas = 3\nheartbeat_timeout = 4.0\ncall_ack_wait = 2.5\nprefix = "desk1"\n',
    )
    monkeypatch.setenv("IPC_HEARTBEAT_TIMEOUT", "5")
    monkeypatch.setenv("IPC_CALL_ACK_WAIT", "3.5")
    config = parse_config(["--config", str(toml), "--call-ack-wait", "4.5"])
    assert config.call_ack_wait == 4.5  # flag over environment and file
    assert config.heartbeat_timeout == 5.0  # environment over file
    assert (config.replicas, config.prefix) == (3, "desk1")  # file over default
    assert config.connect_timeout == 5.0  # default


def test_the_file_may_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPC_CONFIG", str(write(tmp_path / "r.toml", "replicas = 2\n")))
    assert parse_config([]).replicas == 2
    other = write(tmp_path / "other.toml", "replicas = 5\n")
    assert parse_config(["--config", str(other)]).replicas == 5


def test_every_flag_is_a_key(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "router.toml",
        """
nats_url = "nats://alice:pw@10.0.0.1:4222"
router_id = "r1"
data_dir = "/var/lib/ipc"
embedded_host = "0.0.0.0"
embedded_port = 14222
log_level = "debug"
log_format = "json"
lease_ttl = 2
calls_max_bytes = "512MiB"
events_max_msgs = 1000
max_message_size = 2097152
tls_ca = "/etc/ipc/ca.pem"
""",
    )
    config = parse_config(["--config", str(toml)])
    assert config.nats_url == "nats://10.0.0.1:4222"
    assert (config.credentials.user, config.credentials.password) == ("alice", "pw")
    assert config.credentials.tls_ca == Path("/etc/ipc/ca.pem")
    assert (config.router_id, config.data_dir) == ("r1", Path("/var/lib/ipc"))
    assert (config.embedded_host, config.embedded_port) == ("0.0.0.0", 14222)
    assert (config.log_level, config.log_format, config.lease_ttl) == ("DEBUG", "json", 2.0)
    assert config.limits.calls_max_bytes == 512 * 1024**2
    assert config.limits.events_max_msgs == 1000
    assert config.limits.max_message_size == 2 * 1024**2
    flags = {a.dest for a in build_parser()._actions} - {"help", "version", "config"}
    assert flags == set(RouterSettings.model_fields)  # each flag is a key, and back


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("replica = 3\n", "unknown key 'replica'"),
        ("[limits]\ncalls_max_bytes = 1\n", "unknown key 'limits'"),
        ("replicas = 0\n", "replicas in "),
        ('calls_max_bytes = "lots"\n', "calls_max_bytes in "),
        ('log_format = "xml"\n', "log_format in "),
        ("replicas = \n", "is not TOML"),
    ],
)
def test_a_bad_file_exits_2_with_one_line(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write(tmp_path / "router.toml", text)
    with pytest.raises(SystemExit) as exited:
        parse_config(["--config", str(toml)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ipc-router: error: ") and expected in err, err


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(["--config", str(tmp_path / "nope.toml")])
    assert exited.value.code == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_a_bad_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IPC_REPLICAS", "three")
    with pytest.raises(SystemExit):
        parse_config([])
    assert "error: IPC_REPLICAS: " in capsys.readouterr().err


def test_a_secret_in_a_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    text = 'nats_user = "alice"\nnats_password = "s3cr3t"\n'
    shared = parse_config(["--config", str(write(tmp_path / "a.toml", text, 0o644))])
    assert shared.credentials.password == "s3cr3t"
    assert len(shared.warnings) == 1 and "nats_password" in shared.warnings[0]
    assert "s3cr3t" not in shared.warnings[0]
    private = parse_config(["--config", str(write(tmp_path / "b.toml", text, 0o600))])
    assert private.warnings == ()
    no_secret = parse_config(["--config", str(write(tmp_path / "c.toml", "replicas = 1\n", 0o644))])
    assert no_secret.warnings == ()


def test_help_lists_every_variable_and_the_precedence() -> None:
    text = " ".join(build_parser().format_help().split())
    for info in RouterSettings.model_fields.values():
        assert f"env {env_var(info)}" in text
    assert "IPC_REPLICAS" in text and "IPC_CONFIG" in text
    assert "flag > environment variable > config file > default" in text


def test_version_prints_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ipc_router", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == f"ipc-router {__version__}"
