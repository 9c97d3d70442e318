"""Reading a ``CallRequest`` off the wire without Pydantic, for the durable path's hot loop.

``read_call`` takes the common, well-formed shape only: a map with ``v`` 1 and each known
field of exactly its type (what the SDK and the protocol's other clients send). Anything
else, including values Pydantic's lax mode would coerce, returns None, and the caller
decodes it with ``Codec.decode_envelope`` instead, which accepts or refuses it and says
why. So the two agree on every body: the fast path only skips work, never a check.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from ipc_client_sdk._contracts import PROTOCOL_VERSION, CallRequest

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")

_REQUIRED = (("call_id", str), ("service", str), ("method", str), ("payload", bytes))
_OPTIONAL: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("resource_id", (str,)),
    ("deadline", (float, int)),
    ("reply_to", (str,)),
    ("caller", (str,)),
    ("epoch", (int,)),
    ("abandoned", (str,)),
)
_FIELDS = frozenset(CallRequest.model_fields) | {"v"}


def is_token(value: object) -> bool:
    """Whether ``value`` is a subject token (``validate_token``'s rule, without raising)."""
    return type(value) is str and _TOKEN.fullmatch(value) is not None


def read_call(data: bytes, max_envelope: int) -> dict[str, Any] | None:
    """The fields of a well-formed ``CallRequest`` body, or None to decode it the slow way
    (it may still be valid, or be refused with a reason)."""
    if len(data) > max_envelope:
        return None
    try:
        raw = msgpack.unpackb(data)
    except Exception:  # malformed, or an extension type: the codec says which
        return None
    if type(raw) is not dict or type(raw.get("v")) is not int or raw["v"] != PROTOCOL_VERSION:
        return None
    for name, kind in _REQUIRED:
        if type(raw.get(name)) is not kind:
            return None
    for name, kinds in _OPTIONAL:
        value = raw.get(name)
        if value is not None and type(value) not in kinds:
            return None
    delivery = raw.get("delivery", 1)
    direct = raw.get("direct", False)
    if type(delivery) is not int or type(direct) is not bool:
        return None
    if not _FIELDS.issuperset(raw):
        return None  # keys this SDK does not know: let the model ignore them
    return raw


def call_request(raw: dict[str, Any]) -> CallRequest:
    """A ``CallRequest`` of fields ``read_call`` accepted, built without validating again."""
    fields = {name: value for name, value in raw.items() if name != "v" and value is not None}
    return CallRequest.model_construct(**fields)
