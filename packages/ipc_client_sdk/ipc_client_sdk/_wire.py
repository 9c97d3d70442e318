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
    ("ack", (str,)),
    ("done", (str,)),
    ("ack_wait", (float, int)),
    ("router", (str,)),
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


class Call:
    """A call's fields as an instance runs it: a ``CallRequest``'s, in a plain object (no
    model to build for every call). Made by ``call_fields`` from a body ``read_call``
    accepted, or by ``from_request`` from one the codec validated."""

    __slots__ = (
        "abandoned",
        "ack",
        "ack_wait",
        "call_id",
        "caller",
        "deadline",
        "delivery",
        "direct",
        "done",
        "epoch",
        "method",
        "payload",
        "reply_to",
        "resource_id",
        "router",
        "service",
    )

    def __init__(
        self,
        call_id: str,
        service: str,
        method: str,
        payload: bytes,
        resource_id: str | None = None,
        deadline: float | None = None,
        reply_to: str | None = None,
        caller: str | None = None,
        epoch: int | None = None,
        delivery: int = 1,
        abandoned: str | None = None,
        direct: bool = False,
        ack: str | None = None,
        ack_wait: float | None = None,
        router: str | None = None,
        done: str | None = None,
    ) -> None:
        self.call_id = call_id
        self.service = service
        self.method = method
        self.payload = payload
        self.resource_id = resource_id
        self.deadline = deadline
        self.reply_to = reply_to
        self.caller = caller
        self.epoch = epoch
        self.delivery = delivery
        self.abandoned = abandoned
        self.direct = direct
        self.ack = ack
        self.ack_wait = ack_wait
        self.router = router
        self.done = done

    @classmethod
    def from_request(cls, request: CallRequest) -> Call:
        """The fields of a validated ``CallRequest``."""
        return cls(**request.model_dump(exclude={"v"}))


def call_fields(raw: dict[str, Any]) -> Call:
    """A ``Call`` of the fields ``read_call`` accepted (their types already checked)."""
    return Call(
        raw["call_id"],
        raw["service"],
        raw["method"],
        raw["payload"],
        raw.get("resource_id"),
        raw.get("deadline"),
        raw.get("reply_to"),
        raw.get("caller"),
        raw.get("epoch"),
        raw.get("delivery", 1),
        raw.get("abandoned"),
        raw.get("direct", False),
        raw.get("ack"),
        raw.get("ack_wait"),
        raw.get("router"),
        raw.get("done"),
    )
