"""Subjects and JetStream names derive from one validated prefix."""

from __future__ import annotations

import pytest

from ipc_client_sdk.protocol import Subjects, validate_prefix, validate_token


def test_default_prefix_names() -> None:
    s = Subjects()
    assert s.admin("status") == "ipc.admin.status"
    assert s.admin_all == "ipc.admin.*"
    assert s.calls_all == "ipc.call.>"
    assert (s.calls_stream, s.registry_bucket) == ("IPC_CALLS", "IPC_REGISTRY")


def test_prefixes_do_not_share_jetstream_state() -> None:
    a, b = Subjects("desk1.ipc"), Subjects("desk2.ipc")
    assert a.admin("status") == "desk1.ipc.admin.status"
    assert a.calls_stream == "DESK1_IPC_CALLS"
    assert {a.calls_stream, a.registry_bucket}.isdisjoint({b.calls_stream, b.registry_bucket})


@pytest.mark.parametrize(
    "pair", [("desk1.ipc", "desk1x.ipc"), ("a.b", "ab"), ("ipc", "ipc.x"), ("a1.b", "a.1b")]
)
def test_distinct_prefixes_map_to_distinct_names(pair: tuple[str, str]) -> None:
    a, b = (Subjects(p) for p in pair)
    assert a.calls_stream != b.calls_stream
    assert a.registry_bucket != b.registry_bucket


@pytest.mark.parametrize(
    "prefix",
    # '_', '-' and capitals would make two prefixes share a JetStream name.
    ["", "ipc.", "a b", "ipc.*", "ipc.>", ".ipc", "ipc..x", "desk1_ipc", "a-b", "IPC"],
)
def test_bad_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError) as by_rule:
        validate_prefix(prefix)
    with pytest.raises(ValueError) as by_subjects:
        Subjects(prefix)
    assert str(by_rule.value) == str(by_subjects.value)
    assert "lowercase letters and digits" in str(by_rule.value)


def test_good_prefixes_pass_the_rule() -> None:
    assert validate_prefix("ipc") == "ipc"
    assert validate_prefix("desk1.ipc") == "desk1.ipc"


@pytest.mark.parametrize("token", ["", "a.b", "a*", ">", "a b", "tab\t"])
def test_bad_token_is_refused(token: str) -> None:
    with pytest.raises(ValueError):
        validate_token(token, "service")
