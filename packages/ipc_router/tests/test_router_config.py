"""``ipc-router`` command line: defaults, environment, and bad input (exit 2, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipc_router.api.config import parse_config


def test_defaults_mean_embedded_nats(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("IPC_NATS_URL", "IPC_SUBJECT_PREFIX", "IPC_DATA_DIR", "IPC_EMBEDDED_PORT"):
        monkeypatch.delenv(var, raising=False)
    config = parse_config([])
    assert config.nats_url is None
    assert config.prefix == "ipc"
    assert config.data_dir == Path(".ipc")
    assert config.embedded_port == 4222
    assert config.router_id.startswith("router-")


def test_environment_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPC_NATS_URL", "nats://10.0.0.1:4222")
    monkeypatch.setenv("IPC_SUBJECT_PREFIX", "desk1.ipc")
    monkeypatch.setenv("IPC_EMBEDDED_PORT", "14222")
    config = parse_config([])
    assert (config.nats_url, config.prefix, config.embedded_port) == (
        "nats://10.0.0.1:4222",
        "desk1.ipc",
        14222,
    )
    assert parse_config(["--nats-url", "nats://127.0.0.1:1"]).nats_url == "nats://127.0.0.1:1"


@pytest.mark.parametrize(
    "argv",
    [
        ["--prefix", "ipc.*"],
        ["--embedded-port", "0"],
        ["--embedded-port", "http"],
        ["--replicas", "-1"],
        ["--connect-timeout", "nan"],
        ["--log-level", "LOUD"],
        ["--events-max-bytes", "lots"],
        ["--events-max-bytes", "0"],
        ["--calls-max-msgs", "1.5"],
        ["--calls-max-bytes", "64KiB"],  # smaller than the largest message
        ["--no-such-flag"],
    ],
)
def test_bad_flags_exit_2_with_one_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_bad_environment_value_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPC_EMBEDDED_PORT", "nope")
    with pytest.raises(SystemExit) as info:
        parse_config([])
    assert info.value.code == 2
