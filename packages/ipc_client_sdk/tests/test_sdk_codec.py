"""The codec: exact round trips (property tests) and one clear error for every bad input."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from ipc_client_sdk import Codec, CodecError, CodecReason, IPCError, PayloadTooLargeError
from ipc_client_sdk.protocol import AdminRequest, CallReply, CallRequest, ErrorCode, ErrorInfo

codec = Codec()


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class Venue(enum.IntEnum):
    XNAS = 1
    XNYS = 2


class Leg(BaseModel):
    symbol: str
    qty: Decimal
    side: Side


class Order(BaseModel):
    order_id: uuid.UUID
    account: str
    price: Decimal
    placed_at: dt.datetime
    trade_date: dt.date
    venue: Venue
    legs: list[Leg]
    tags: set[str]
    raw: bytes
    notional_cents: int


# --- strategies ------------------------------------------------------------------------------

decimals = st.decimals(allow_nan=True, allow_infinity=True) | st.decimals(places=8)
aware = st.datetimes(timezones=st.timezones())
naive = st.datetimes()
scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # includes integers beyond 64 bits
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | decimals
    | aware
    | naive
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.uuids()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also checks types, and compares Decimals exactly (NaN included)."""
    if isinstance(a, Decimal):
        return isinstance(b, Decimal) and str(a) == str(b)
    if isinstance(a, dt.datetime):
        # Same wall time, same offset, same microseconds: the same instant. (Plain == is
        # False across zones for times in a DST gap, by PEP 495, even when the instant
        # matches; a named zone travels as its offset at that instant.)
        return isinstance(b, dt.datetime) and a.isoformat() == b.isoformat()
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(values)
@settings(max_examples=300)
def test_any_supported_value_round_trips_exactly(value: Any) -> None:
    assert same(codec.decode(codec.encode(value)), value)


@given(decimals)
def test_decimal_never_passes_through_float(value: Decimal) -> None:
    back = codec.decode(codec.encode({"px": value}))["px"]
    assert isinstance(back, Decimal)
    assert str(back) == str(value)  # exponent and trailing zeros kept: 1.10 stays 1.10


orders = st.builds(
    Order,
    order_id=st.uuids(),
    account=st.text(max_size=20),
    price=st.decimals(allow_nan=False, allow_infinity=False),
    placed_at=aware,
    trade_date=st.dates(),
    venue=st.sampled_from(Venue),
    legs=st.lists(
        st.builds(
            Leg,
            symbol=st.text(max_size=8),
            qty=st.decimals(allow_nan=False, allow_infinity=False),
            side=st.sampled_from(Side),
        ),
        max_size=3,
    ),
    tags=st.sets(st.text(max_size=5), max_size=3),
    raw=st.binary(max_size=32),
    notional_cents=st.integers(),
)


@given(orders)
def test_pydantic_model_round_trips_through_its_type(order: Order) -> None:
    back = codec.decode(codec.encode(order), Order)
    assert isinstance(back, Order)
    # A named zone arrives as its offset (documented). Python calls two aware datetimes in
    # different zones unequal when one is an ambiguous local time (PEP 495), even at the
    # same instant, so the instant and the offset are compared exactly on their own.
    assert back.placed_at.astimezone(dt.UTC) == order.placed_at.astimezone(dt.UTC)
    assert back.placed_at.utcoffset() == order.placed_at.utcoffset()
    assert back.model_copy(update={"placed_at": order.placed_at}) == order
    assert str(back.price) == str(order.price)
    assert all(isinstance(leg.side, Side) for leg in back.legs)


class Quote(BaseModel):
    """Wire names in camelCase, as many venues' models have them."""

    model_config = ConfigDict(populate_by_name=True)

    last_px: Decimal = Field(alias="lastPx")
    leg: Leg = Field(alias="legInfo")


def test_aliased_model_round_trips() -> None:
    quote = Quote(
        lastPx=Decimal("101.25"), legInfo=Leg(symbol="X", qty=Decimal("2"), side=Side.BUY)
    )
    assert codec.decode(codec.encode(quote), Quote) == quote
    assert "lastPx" in codec.decode(codec.encode(quote))  # the wire carries the alias


def test_known_prices_keep_their_exact_digits() -> None:
    prices = [Decimal("0.1"), Decimal("1.10"), Decimal("1E+3"), Decimal("-0"), Decimal("1e-28")]
    assert [str(p) for p in codec.decode(codec.encode(prices))] == [str(p) for p in prices]


@given(
    st.builds(
        CallRequest,
        call_id=st.text(min_size=1),
        service=st.text(min_size=1),
        method=st.text(min_size=1),
        payload=st.binary(),
        resource_id=st.none() | st.text(),
        deadline=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        epoch=st.none() | st.integers(min_value=0, max_value=2**40),
    )
)
def test_envelopes_round_trip(request: CallRequest) -> None:
    assert codec.decode_envelope(codec.encode_envelope(request), CallRequest) == request


def test_reply_carries_the_error_model() -> None:
    reply = CallReply(
        call_id="c1",
        error=ErrorInfo(code=ErrorCode.NOT_FOUND, message="no such method", details={"m": "x"}),
    )
    back = codec.decode_envelope(codec.encode_envelope(reply), CallReply)
    assert back.error == reply.error
    assert back.payload is None


def test_envelopes_ignore_fields_from_a_newer_peer() -> None:
    data = codec.encode({"v": 1, "op": "status", "args": {}, "added_later": [1, 2]})
    assert codec.decode_envelope(data, AdminRequest).op == "status"


# --- bad input: always a CodecError, never a msgpack or pydantic exception ------------------


def reason_of(call: Any) -> CodecReason:
    with pytest.raises(CodecError) as info:
        call()
    assert isinstance(info.value, IPCError)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    return info.value.reason


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # a reserved, never-valid type byte
        b"\x92\x01",  # an array of 2 with only 1 element: truncated
        b"\x01\x02",  # extra bytes after a complete value
        b"",
        msgpack.packb(msgpack.ExtType(99, b"?")),  # unknown extension type
        msgpack.packb(msgpack.ExtType(1, b"not-a-number")),  # bad Decimal text
        msgpack.packb(msgpack.ExtType(6, b"short")),  # bad UUID bytes
        msgpack.packb(msgpack.ExtType(2, b"\xff\xfe")),  # not even ASCII
        msgpack.packb({(1, 2): 3}, use_bin_type=True),  # a map with an array as key
    ],
)
def test_malformed_bytes(data: bytes) -> None:
    assert reason_of(lambda: codec.decode(data)) is CodecReason.MALFORMED
    assert reason_of(lambda: codec.decode_envelope(data, CallRequest)) is CodecReason.MALFORMED


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_escape_as_another_exception(data: bytes) -> None:
    try:
        codec.decode_envelope(data, CallRequest)
    except CodecError:
        pass


ext_contents = st.binary(max_size=24) | values.map(lambda v: msgpack.packb(v, default=str))


@given(st.integers(min_value=-128, max_value=127), ext_contents, st.booleans())
@settings(max_examples=400)
def test_any_extension_payload_is_a_value_or_a_codec_error(
    code: int, content: bytes, wrap: bool
) -> None:
    # ext 32 by hand: msgpack.ExtType refuses the negative (reserved) codes a peer may send.
    ext = b"\xc9" + len(content).to_bytes(4, "big") + code.to_bytes(1, "big", signed=True) + content
    data = b"\x82\xa1v\x01\xa1x\x91" + ext if wrap else ext  # {"v": 1, "x": [ext]}
    try:
        codec.decode(data)
    except CodecError:
        pass


@pytest.mark.parametrize(
    "parts", [[10**10, 0, 0], [float("inf"), 0, 0], [1, 2], "x", [1.5, 0, 0], [True, 0, 0]]
)
def test_out_of_range_or_mistyped_timedelta(parts: Any) -> None:
    data = msgpack.packb(msgpack.ExtType(5, msgpack.packb(parts)))
    assert reason_of(lambda: codec.decode(data)) is CodecReason.MALFORMED


def test_out_of_range_date() -> None:
    data = msgpack.packb(msgpack.ExtType(3, b"99999-01-01"))
    assert reason_of(lambda: codec.decode(data)) is CodecReason.MALFORMED


@pytest.mark.parametrize("version", [0, 2, "1", None, True, 1.0])
def test_unknown_protocol_version(version: Any) -> None:
    raw = {"call_id": "c", "service": "s", "method": "m", "payload": b""}
    if version is not None:
        raw["v"] = version
    data = codec.encode(raw)
    assert reason_of(lambda: codec.decode_envelope(data, CallRequest)) is (
        CodecReason.UNSUPPORTED_VERSION
    )


def test_missing_fields_are_named() -> None:
    data = codec.encode({"v": 1, "service": "s"})
    with pytest.raises(CodecError) as info:
        codec.decode_envelope(data, CallRequest)
    assert info.value.reason is CodecReason.INVALID_FIELDS
    assert "call_id" in info.value.message and "method" in info.value.message


def test_envelope_that_is_not_a_map() -> None:
    data = codec.encode([1, 2, 3])
    assert reason_of(lambda: codec.decode_envelope(data, CallRequest)) is CodecReason.MALFORMED


def test_payload_that_fails_its_model() -> None:
    data = codec.encode({"symbol": "AAPL", "qty": "lots", "side": "buy"})
    assert reason_of(lambda: codec.decode(data, Leg)) is CodecReason.INVALID_FIELDS


def test_oversized_payload_is_refused_both_ways() -> None:
    small = Codec(max_payload=1024)
    with pytest.raises(PayloadTooLargeError) as info:
        small.encode(b"x" * 2000)
    assert (info.value.limit, info.value.reason) == (1024, CodecReason.TOO_LARGE)
    assert info.value.size > 1024
    with pytest.raises(PayloadTooLargeError):
        small.decode(codec.encode(b"x" * 2000))
    assert small.decode(small.encode(b"x" * 1000)) == b"x" * 1000


def test_default_limit_is_one_mebibyte() -> None:
    assert codec.max_payload == 1024 * 1024
    with pytest.raises(PayloadTooLargeError):
        codec.encode(b"x" * (1024 * 1024))


def test_oversized_envelope_is_refused() -> None:
    small = Codec(max_payload=1024)
    request = CallRequest(call_id="c", service="s", method="m", payload=b"x" * 200_000)
    with pytest.raises(PayloadTooLargeError):
        small.encode_envelope(request)
    with pytest.raises(PayloadTooLargeError):
        small.decode_envelope(codec.encode_envelope(request), CallRequest)


def test_unencodable_value() -> None:
    assert reason_of(lambda: codec.encode({"x": object()})) is CodecReason.UNENCODABLE
    # The codec stays usable after a failed encode.
    assert codec.decode(codec.encode({"x": 1})) == {"x": 1}


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Codec(max_payload=0)


class Price(enum.Enum):
    TICK = Decimal("0.01")


def test_values_that_dump_to_other_extension_types_round_trip() -> None:
    codec = Codec()
    assert codec.decode(codec.encode(Price.TICK), Price) is Price.TICK
    root = pydantic.RootModel[Decimal](Decimal("2.50"))
    assert codec.decode(codec.encode(root)) == Decimal("2.50")
    assert codec.decode(codec.encode({"p": Price.TICK})) == {"p": Decimal("0.01")}


class Stamped(BaseModel):
    at: dt.datetime
    label: str


def _standard_timestamp(seconds: int, nanoseconds: int) -> msgpack.Timestamp:
    """MessagePack's timestamp extension (-1) as other languages' libraries write it: msgpack
    packs it in the 32, 64 or 96-bit form the value needs."""
    return msgpack.Timestamp(seconds, nanoseconds)


@pytest.mark.parametrize(
    ("seconds", "nanoseconds", "expected"),
    [
        (1_764_322_200, 0, dt.datetime(2025, 11, 28, 9, 30, tzinfo=dt.UTC)),
        (1_764_322_200, 123_456_000, dt.datetime(2025, 11, 28, 9, 30, 0, 123456, tzinfo=dt.UTC)),
        (-86_400, 0, dt.datetime(1969, 12, 31, tzinfo=dt.UTC)),  # timestamp 96
        (17_179_869_184, 0, dt.datetime(2514, 5, 30, 1, 53, 4, tzinfo=dt.UTC)),  # 96 too
    ],
)
def test_a_standard_timestamp_decodes_as_an_aware_utc_datetime(
    seconds: int, nanoseconds: int, expected: dt.datetime
) -> None:
    data = msgpack.packb({"at": _standard_timestamp(seconds, nanoseconds), "label": "x"})
    decoded = codec.decode(data, Stamped)
    assert decoded.at == expected
    assert decoded.at.utcoffset() == dt.timedelta(0)


def test_a_standard_timestamp_decodes_untyped_and_inside_an_envelope() -> None:
    stamp = _standard_timestamp(1_764_322_200, 0)
    assert codec.decode(msgpack.packb(stamp)) == dt.datetime(2025, 11, 28, 9, 30, tzinfo=dt.UTC)
    payload = msgpack.packb({"at": stamp, "label": "from node"})
    request = CallRequest(call_id="c1", service="s", method="m", payload=payload)
    back = codec.decode_envelope(codec.encode_envelope(request), CallRequest)
    assert codec.decode(back.payload, Stamped).label == "from node"
