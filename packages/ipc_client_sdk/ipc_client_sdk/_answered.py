"""``AnsweredCalls``: the outcomes and durations of the durable calls an instance answered,
reported to the routers with its heartbeats.

The router forwards a durable call and is then off its reply path: the instance answers
the caller. So the instance counts each answered call (its outcome, and the seconds from
its arrival to its answer) and sends what it counted since its last heartbeat with the
next one (``Heartbeat.calls``); the leading router adds them to the counters that
``ipc stats`` and ``/metrics`` read. A heartbeat that is lost loses its counts.
"""

from __future__ import annotations

import msgpack

from ipc_client_sdk._contracts import MAX_REPORTED_METHODS, ErrorCode
from ipc_client_sdk._tally import CallTally

_OUTCOMES = {code.value: code.value.lower() for code in ErrorCode}


def reply_outcome(reply: bytes) -> str:
    """``ok``, or the lower-case error code of an encoded ``CallReply``.

    Cheap for a success: only a reply that contains the bytes of the key ``error`` is
    decoded.
    """
    if b"error" not in reply:
        return "ok"
    try:
        envelope = msgpack.unpackb(reply)
    except Exception:  # anything may fail to unpack
        return "other"
    error = envelope.get("error") if isinstance(envelope, dict) else None
    if not error:
        return "ok"
    code = error.get("code") if isinstance(error, dict) else None
    return outcome_of_code(code) if isinstance(code, str) else "other"


def outcome_of_code(code: str) -> str:
    """The outcome label of an error code (``other`` for one this SDK does not know)."""
    return _OUTCOMES.get(code, "other")


class AnsweredCalls:
    """What an instance answered since its last heartbeat, by method."""

    __slots__ = ("_tallies",)

    def __init__(self) -> None:
        self._tallies: dict[str, CallTally] = {}

    def add(self, method: str, reply: bytes, seconds: float) -> None:
        """Count one answered call."""
        tally = self._tallies.get(method)
        if tally is None:
            if len(self._tallies) >= MAX_REPORTED_METHODS:
                return
            tally = self._tallies[method] = CallTally()
        tally.add(reply_outcome(reply), seconds)

    def take(self) -> dict[str, tuple[dict[str, int], list[int], float]] | None:
        """What was counted, as ``Heartbeat.calls`` carries it (method -> [outcome counts,
        bucket counts, seconds in all]), and start counting anew; None if nothing was."""
        if not self._tallies:
            return None
        tallies, self._tallies = self._tallies, {}
        return {m: (t.outcomes, t.counts, t.total) for m, t in tallies.items()}
