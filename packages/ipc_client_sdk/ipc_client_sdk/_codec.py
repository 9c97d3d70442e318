"""MessagePack codec for envelopes and payloads.

Types MessagePack has no word for travel as extension types, each in an exact text or byte
form, so that nothing passes through a float on the way:

    code  type        form
    1     Decimal     str(d), e.g. "12.340" (sign, exponent, NaN and Infinity kept)
    2     datetime    isoformat, offset included when aware
    3     date        isoformat
    4     time        isoformat
    5     timedelta   msgpack [days, seconds, microseconds]
    6     UUID        16 raw bytes
    7     int         decimal text, for integers beyond 64 bits
    -1    datetime    MessagePack's standard timestamp (decode only): an aware UTC
                      datetime, to the microsecond (nanoseconds beyond are dropped)

Pydantic models are dumped in Python mode by alias (enums become their values, nested models
dicts, sets and tuples lists) and validated back on the receiving side by the expected type.

Limits of "exact": a named time zone travels as its UTC offset at that instant (the instant
is exact, the zone's name is not carried); a ``time`` with a named zone has no offset and
arrives naive; a naive ``datetime``'s ``fold`` is not carried.
Every failure is a ``CodecError``; no msgpack or pydantic exception escapes.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import uuid
from decimal import Decimal
from typing import Any

import msgpack
from pydantic import BaseModel, TypeAdapter, ValidationError

from ipc_client_sdk._contracts import PROTOCOL_VERSION, Envelope
from ipc_client_sdk._errors import CodecError, CodecReason, PayloadTooLargeError

DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""Default payload limit: 1 MiB, NATS's own default message limit."""

ENVELOPE_OVERHEAD = 64 * 1024
"""Room an envelope may take around its payload before it counts as too large."""

_EXT_DECIMAL = 1
_EXT_DATETIME = 2
_EXT_DATE = 3
_EXT_TIME = 4
_EXT_TIMEDELTA = 5
_EXT_UUID = 6
_EXT_BIGINT = 7

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def _decimal(obj: Decimal) -> msgpack.ExtType:
    return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode("ascii"))


def _datetime(obj: dt.datetime) -> msgpack.ExtType:
    return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode("ascii"))


def _date(obj: dt.date) -> msgpack.ExtType:
    return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode("ascii"))


def _time(obj: dt.time) -> msgpack.ExtType:
    return msgpack.ExtType(_EXT_TIME, obj.isoformat().encode("ascii"))


def _timedelta(obj: dt.timedelta) -> msgpack.ExtType:
    parts = msgpack.packb([obj.days, obj.seconds, obj.microseconds])
    return msgpack.ExtType(_EXT_TIMEDELTA, parts)


def _uuid(obj: uuid.UUID) -> msgpack.ExtType:
    return msgpack.ExtType(_EXT_UUID, obj.bytes)


def _model(obj: BaseModel) -> Any:
    # by_alias: the receiving side validates by alias (e.g. camelCase wire names).
    # ``model_dump(mode="python", by_alias=True)`` without its wrapper's keyword passing.
    return _packable(obj.__pydantic_serializer__.to_python(obj, by_alias=True))


_BY_TYPE: dict[type, Any] = {
    Decimal: _decimal,
    dt.datetime: _datetime,
    dt.date: _date,
    dt.time: _time,
    dt.timedelta: _timedelta,
    uuid.UUID: _uuid,
}
"""The exact types ``_default`` maps without a chain of ``isinstance`` tests (every
payload's prices and timestamps pass through it)."""


def _default(obj: Any) -> Any:
    """Map a value MessagePack cannot pack to one it can (called by msgpack)."""
    exact = _BY_TYPE.get(type(obj))
    if exact is not None:
        return exact(obj)
    if isinstance(obj, BaseModel):
        return _model(obj)
    # Subclasses; datetime is a subclass of date, so it must be tested first.
    if isinstance(obj, Decimal):
        return _decimal(obj)
    if isinstance(obj, dt.datetime):
        return _datetime(obj)
    if isinstance(obj, dt.date):
        return _date(obj)
    if isinstance(obj, dt.time):
        return _time(obj)
    if isinstance(obj, dt.timedelta):
        return _timedelta(obj)
    if isinstance(obj, uuid.UUID):
        return _uuid(obj)
    if isinstance(obj, int) and not _INT64_MIN <= obj <= _UINT64_MAX:
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode("ascii"))
    if isinstance(obj, enum.Enum):
        return _packable(obj.value)
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"cannot encode a value of type {type(obj).__qualname__}")


_NATIVE = (dict, list, tuple, str, bytes, bytearray, bool, float, type(None))


def _packable(value: Any) -> Any:
    """msgpack applies ``_default`` once per value: convert what it returned, if needed
    (a ``RootModel[Decimal]`` dumps to a Decimal, an enum's value may be one)."""
    if isinstance(value, _NATIVE) or (
        isinstance(value, int) and _INT64_MIN <= value <= _UINT64_MAX
    ):
        return value
    return _default(value)


def _ext_hook(code: int, data: bytes) -> Any:
    """Rebuild an extension value (called by msgpack)."""
    match code:
        case 1:
            return Decimal(data.decode("ascii"))
        case 2:
            return dt.datetime.fromisoformat(data.decode("ascii"))
        case 3:
            return dt.date.fromisoformat(data.decode("ascii"))
        case 4:
            return dt.time.fromisoformat(data.decode("ascii"))
        case 5:
            parts = msgpack.unpackb(data)
            if not (isinstance(parts, list) and len(parts) == 3):
                raise ValueError("a timedelta is [days, seconds, microseconds]")
            if not all(type(p) is int for p in parts):
                raise ValueError("timedelta parts must be integers")
            return dt.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])
        case 6:
            return uuid.UUID(bytes=data)
        case 7:
            return int(data.decode("ascii"))
    raise ValueError(f"unknown extension type {code}")


@functools.lru_cache(maxsize=256)
def _adapter(target: Any) -> TypeAdapter[Any]:
    return TypeAdapter(target)


def check_type(as_type: Any) -> None:
    """Make sure values can be validated as ``as_type``; call it where the type is given.

    Raises:
        TypeError: Pydantic cannot validate this type (an arbitrary class, say), or the
            type is not hashable.
    """
    try:
        _adapter(as_type)
    except Exception as e:  # PydanticSchemaGenerationError, TypeError (unhashable), ...
        raise TypeError(f"cannot validate values as {as_type!r}: {e}") from e


class Codec:
    """Encodes and decodes payloads and envelopes, enforcing a size limit.

    Args:
        max_payload: the largest payload, in bytes, this codec encodes or decodes.
            Envelopes may be ``ENVELOPE_OVERHEAD`` bytes larger than that.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if max_payload <= 0:
            raise ValueError(f"max_payload must be positive, got {max_payload}")
        self.max_payload = max_payload
        self.max_envelope = max_payload + ENVELOPE_OVERHEAD
        self._packer = msgpack.Packer(default=_default, use_bin_type=True, datetime=False)

    def encode(self, value: Any) -> bytes:
        """Encode a payload (a Pydantic model or any supported value).

        Raises:
            CodecError: the value holds something that cannot be encoded.
            PayloadTooLargeError: the encoded payload is over ``max_payload``.
        """
        data = self._pack(value)
        if len(data) > self.max_payload:
            raise PayloadTooLargeError(len(data), self.max_payload)
        return data

    def decode(self, data: bytes, as_type: Any = None) -> Any:
        """Decode a payload, validated as ``as_type`` when one is given.

        Raises:
            CodecError: malformed bytes, or a value that ``as_type`` rejects.
            PayloadTooLargeError: the bytes are over ``max_payload``.
        """
        if len(data) > self.max_payload:
            raise PayloadTooLargeError(len(data), self.max_payload)
        value = _unpack(data)
        return value if as_type is None else self.validate(value, as_type)

    def validate(self, value: Any, as_type: Any) -> Any:
        """Validate an already decoded value as ``as_type`` (a model or any type Pydantic
        knows).

        Raises:
            CodecError: the value does not fit the type.
        """
        try:
            adapter = _adapter(as_type)
        except Exception as e:  # a type Pydantic cannot validate, or an unhashable one
            raise CodecError(
                CodecReason.INVALID_FIELDS, f"cannot validate values as {as_type!r}: {e}"
            ) from e
        try:
            return adapter.validate_python(value)
        except ValidationError as e:
            raise CodecError(CodecReason.INVALID_FIELDS, _describe(e)) from e

    def encode_envelope(self, envelope: Envelope) -> bytes:
        """Encode an envelope; its payload bytes travel as MessagePack binary."""
        return self.encode_fields(envelope.model_dump(mode="python", exclude_none=True))

    def encode_fields(self, fields: dict[str, Any]) -> bytes:
        """Encode an envelope given as the map ``encode_envelope`` would dump it to (built
        by the caller on a hot path, without constructing the model).

        Raises:
            CodecError: a value cannot be encoded.
            PayloadTooLargeError: the envelope is over the envelope limit.
        """
        data = self._pack(fields)
        if len(data) > self.max_envelope:
            raise PayloadTooLargeError(len(data), self.max_envelope)
        return data

    def decode_envelope[E: Envelope](self, data: bytes, kind: type[E]) -> E:
        """Decode and validate an envelope of the given kind.

        Raises:
            CodecError: malformed bytes, a protocol version this SDK does not speak, or
                missing or mistyped fields.
            PayloadTooLargeError: the bytes are over the envelope limit.
        """
        raw = self.envelope_fields(data, kind)
        try:
            return kind.model_validate(raw)
        except ValidationError as e:
            raise invalid_envelope(kind, e) from e

    def envelope_fields(self, data: bytes, kind: type[Envelope]) -> dict[Any, Any]:
        """Decode an envelope of the given kind as a plain map, its size and protocol
        version checked, its fields not (``decode_envelope`` validates them).

        Raises:
            CodecError: malformed bytes, not a map, or a protocol version this SDK does not
                speak.
            PayloadTooLargeError: the bytes are over the envelope limit.
        """
        if len(data) > self.max_envelope:
            raise PayloadTooLargeError(len(data), self.max_envelope)
        raw = _unpack(data)
        if not isinstance(raw, dict):
            raise CodecError(
                CodecReason.MALFORMED,
                f"a {kind.__name__} envelope must be a map, got {type(raw).__name__}",
            )
        version = raw.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:  # True == 1 in Python
            raise CodecError(
                CodecReason.UNSUPPORTED_VERSION,
                f"protocol version {version!r} is not supported (this peer speaks "
                f"{PROTOCOL_VERSION})",
            )
        return raw

    def _pack(self, value: Any) -> bytes:
        try:
            return self._packer.pack(value)
        except (TypeError, ValueError, OverflowError) as e:
            # A failed pack can leave the packer's buffer half-written.
            self._packer.reset()
            raise CodecError(CodecReason.UNENCODABLE, f"cannot encode payload: {e}") from e


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            # timestamp=3: the standard timestamp extension (-1), what other languages'
            # MessagePack libraries send for a date, arrives as an aware UTC datetime.
            data,
            raw=False,
            ext_hook=_ext_hook,
            strict_map_key=False,
            timestamp=3,
        )
    # ArithmeticError covers Decimal's InvalidOperation and OverflowError (a timedelta or
    # date out of range).
    except (ValueError, TypeError, ArithmeticError, msgpack.UnpackException) as e:
        detail = str(e) or type(e).__name__
        raise CodecError(CodecReason.MALFORMED, f"malformed MessagePack: {detail}") from e


def invalid_envelope(kind: type[Envelope], error: ValidationError) -> CodecError:
    """The error for an envelope whose fields do not fit its kind."""
    return CodecError(CodecReason.INVALID_FIELDS, f"invalid {kind.__name__}: {_describe(error)}")


def _describe(error: ValidationError) -> str:
    """One line naming each failing field: ``call_id: Field required; ...``."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "value"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
