"""A call's envelopes as the caller writes and reads them: plain maps on the hot path.

``CallRequest`` and ``CallReply`` (``_contracts``) are the contracts. Building the request
model, validating it and dumping it again, and validating every reply, cost a caller more
than the rest of its envelope work; the values the caller sends were checked where the
call was made, and a reply of the plain shape is taken as the model would take it. The
tests hold both to the models: the same bytes out, the same results and errors in.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ipc_client_sdk._codec import invalid_envelope
from ipc_client_sdk._contracts import PROTOCOL_VERSION, CallReply


class Outgoing:
    """One call as the caller sends it: what every attempt's envelope carries."""

    __slots__ = ("call_id", "caller", "deadline", "method", "payload", "resource_id", "service")

    def __init__(
        self,
        call_id: str,
        service: str,
        method: str,
        payload: bytes,
        resource_id: str | None,
        deadline: float,
        caller: str,
    ) -> None:
        self.call_id = call_id
        self.service = service
        self.method = method
        self.payload = payload
        self.resource_id = resource_id
        self.deadline = deadline
        self.caller = caller

    def envelope(
        self, *, reply_to: str | None = None, epoch: int | None = None, direct: bool = False
    ) -> dict[str, Any]:
        """The ``CallRequest`` as ``Codec.encode_envelope`` dumps it (its fields in order,
        None left out), built without the model: the values were checked where the call
        was made, and the model's validation would cost the caller more than the rest of
        the envelope's work."""
        fields: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "call_id": self.call_id,
            "service": self.service,
            "method": self.method,
            "payload": self.payload,
        }
        if self.resource_id is not None:
            fields["resource_id"] = self.resource_id
        fields["deadline"] = self.deadline
        if reply_to is not None:
            fields["reply_to"] = reply_to
        fields["caller"] = self.caller
        if epoch is not None:
            fields["epoch"] = epoch
        fields["delivery"] = 1
        fields["direct"] = direct
        return fields


def plain_answer(fields: dict[Any, Any]) -> bool:
    """Whether a reply's map is a result with no error, each field of the type
    ``CallReply`` declares: then the model would take every value as it is."""
    payload = fields.get("payload")
    service = fields.get("service")
    instance = fields.get("instance")
    return (
        type(fields.get("call_id")) is str
        and fields.get("error") is None
        and (payload is None or type(payload) is bytes)
        and (service is None or type(service) is str)
        and (instance is None or type(instance) is str)
    )


def validated_reply(fields: dict[Any, Any]) -> CallReply:
    """The reply's map validated as a ``CallReply``.

    Raises:
        CodecError: missing or mistyped fields (as ``Codec.decode_envelope`` says it).
    """
    try:
        return CallReply.model_validate(fields)
    except ValidationError as e:
        raise invalid_envelope(CallReply, e) from e
