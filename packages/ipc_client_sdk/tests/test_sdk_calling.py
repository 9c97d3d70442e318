"""The caller's envelopes, written and read without the models on the hot path: the same
bytes out, and the same results and errors in, as through ``CallRequest`` and ``CallReply``."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipc_client_sdk import Codec, IPCError, RemoteError
from ipc_client_sdk._call_envelopes import Outgoing
from ipc_client_sdk._calling import Caller, error_from_reply
from ipc_client_sdk._link import Link
from ipc_client_sdk._subjects import Subjects
from ipc_client_sdk.protocol import CallReply, CallRequest, ErrorCode

codec = Codec()


@pytest.mark.parametrize("resource_id", ["acc_1", None])
def test_the_call_envelopes_are_the_models_byte_for_byte(resource_id: str | None) -> None:
    call = Outgoing("c1", "svc", "m", codec.encode(7), resource_id, 1.5e9, "caller")
    common = {
        "call_id": "c1",
        "service": "svc",
        "method": "m",
        "payload": codec.encode(7),
        "resource_id": resource_id,
        "deadline": 1.5e9,
        "caller": "caller",
    }
    durable = CallRequest(**common, reply_to="_INBOX.x.1")  # type: ignore[arg-type]
    direct = CallRequest(**common, epoch=3, direct=True)  # type: ignore[arg-type]
    for built, model in [
        (call.envelope(reply_to="_INBOX.x.1"), durable),
        (call.envelope(epoch=3, direct=True), direct),
    ]:
        assert list(built.items()) == list(
            model.model_dump(mode="python", exclude_none=True).items()
        )
        assert codec.encode_fields(built) == codec.encode_envelope(model)


def _reference(raw: bytes, call_id: str, returns: Any) -> Any:
    """What the caller made of a reply through the model."""
    reply = codec.decode_envelope(raw, CallReply)
    if reply.call_id != call_id:
        raise RemoteError(
            f"the reply names another call ({reply.call_id[:128]!r}); not taken",
            code=ErrorCode.INTERNAL,
            call_id=call_id,
            service="svc",
        )
    if reply.error is not None:
        raise error_from_reply(reply, call_id, "svc")
    if reply.payload is None:
        return None
    try:
        return codec.decode(reply.payload, returns)
    except IPCError as e:
        e.call_id, e.service, e.instance = call_id, "svc", reply.instance
        raise


def _outcome(read: Any) -> tuple[str, Any]:
    try:
        return "value", read()
    except IPCError as e:
        return type(e).__name__, (str(e), e.code, e.call_id, e.service, e.instance)


_MISSING = object()
_VALID: dict[str, Any] = {
    "v": 1,
    "call_id": "c1",
    "payload": msgpack.packb(7),
    "error": None,
    "service": "svc2",
    "instance": "b1",
    "other": 1,
}
_OTHERS: dict[str, list[Any]] = {
    "v": [2, True, "1", _MISSING],
    "call_id": ["c2", b"c1", 5, None, _MISSING],
    "payload": [msgpack.packb("x"), b"", b"\xc1", "7", 3, None, _MISSING],
    "error": [
        _MISSING,
        {"code": "NOT_FOUND", "message": "no such method"},
        {"code": "UNAVAILABLE", "message": "full", "details": {"store_full": "CALLS"}},
        {"code": "bogus", "message": "x"},
        "oops",
    ],
    "service": [None, 1, _MISSING],
    "instance": [None, b"b1", _MISSING],
    "other": [_MISSING],
}


def _same_reading(drawn: dict[str, Any], returns: Any) -> None:
    fields = {key: value for key, value in drawn.items() if value is not _MISSING}
    raw = msgpack.packb(fields, use_bin_type=True)
    link = Link(servers=[], name=None, subjects=Subjects(), codec=codec, request_timeout=1)
    caller = Caller(link)
    fast = _outcome(lambda: caller._result(raw, "c1", "svc", returns))
    assert fast == _outcome(lambda: _reference(raw, "c1", returns))


@pytest.mark.parametrize("returns", [None, int])
@pytest.mark.parametrize(
    ("key", "value"), [(key, value) for key, values in _OTHERS.items() for value in values]
)
def test_each_field_of_a_reply_reads_as_the_model_reads_it(
    key: str, value: Any, returns: Any
) -> None:
    _same_reading({**_VALID, key: value}, returns)


@given(
    st.fixed_dictionaries(
        {key: st.sampled_from([_VALID[key], *others]) for key, others in _OTHERS.items()}
    ),
    st.sampled_from([None, int]),
)
def test_replies_read_as_the_model_reads_them(drawn: dict[str, Any], returns: Any) -> None:
    _same_reading(drawn, returns)
