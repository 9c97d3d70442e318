"""``CallRunner``: how an instance handles one delivered call, at most once per call.

- A call already running here is not started again: the repeat waits for the first run's
  reply.
- Every other delivery first claims the call in the results bucket (``ResultLedger``), so
  a repeat on any instance finds the claim or the recorded outcome instead of running.
- A handler's outcome (result or error) replaces the claim while the reply goes out (the
  answer is sent first, the write right behind it); the instance acks the call only once
  the outcome is stored, so a repeat delivered after a crash finds it, or finds the claim
  of an instance that died before storing it and is answered ``UNKNOWN``.
- Outcomes a caller may retry (a retryable ``IPCError``, a request that does not validate)
  release the claim instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgpack

from ipc_client_sdk._answered import AnsweredCalls
from ipc_client_sdk._codec import Codec
from ipc_client_sdk._contracts import (
    PROTOCOL_VERSION,
    CallReply,
    CallRequest,
    ErrorCode,
    ErrorInfo,
)
from ipc_client_sdk._errors import CodecError, IPCError
from ipc_client_sdk._ledger import ResultLedger
from ipc_client_sdk._logs import RateLimitedLog, clip
from ipc_client_sdk._metrics import NoClientMetrics
from ipc_client_sdk._service import CallContext, MethodSpec, Service
from ipc_client_sdk._subjects import validate_token
from ipc_client_sdk._tracing import current_trace_id, failed, serving_call
from ipc_client_sdk._wire import Call, call_fields, read_call

_log = logging.getLogger("ipc_client_sdk.serving")

_MAX_ERROR_MESSAGE = 500

_pack = msgpack.Packer(use_bin_type=True).pack

Admission = Callable[[Call], str | None]
"""Why the instance must refuse a call now (``fenced``, ``stale-epoch``), or None."""

Answer = Callable[[bytes], Awaitable[None]]
"""Sends a handler's reply to the caller, before its outcome is stored."""


_REFUSALS = {
    "fenced": "instance {instance} is fenced: it has not heard the router within its lease",
    "stale-epoch": "call {call_id} was routed under epoch {epoch}, before the roles of "
    "instance {instance} changed",
    "draining": "instance {instance} is handing its roles over: call {call_id} is routed " "again",
    "not-owner": "instance {instance} does not hold the role direct call {call_id} needs",
}


class _Refused(Exception):
    """The instance must not run this call now (``reason``: fenced, stale-epoch)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CallRunner:
    """Runs the calls delivered to one instance.

    Args:
        codec: the client's codec.
        service: the methods served.
        instance_id: this instance.
        ledger: claims and outcomes in the results bucket.
        admit: checked before a call is claimed; a reason to refuse it makes the reply a
            ``FAILED_PRECONDITION`` that the router routes again.
        metrics: times each handler run.
    """

    def __init__(
        self,
        codec: Codec,
        service: Service,
        instance_id: str,
        ledger: ResultLedger,
        *,
        admit: Admission | None = None,
        metrics: NoClientMetrics | None = None,
    ) -> None:
        self._codec = codec
        self._metrics = metrics or NoClientMetrics()
        self._service = service
        self._name = service.name
        self.instance_id = instance_id
        self.ledger = ledger
        self.answered = AnsweredCalls()
        """The routed calls answered here since the last heartbeat took them."""
        self._running: dict[tuple[str, str | None, str], asyncio.Future[bytes]] = {}
        self._admit = admit
        self._problems = RateLimitedLog(_log)  # per call, whoever sends them: few lines

    def read(self, data: bytes, *, direct: bool) -> Call | bytes:
        """The call a delivered message carries, or the encoded error reply for a body that
        is not one.

        ``direct``: whether it arrived on the instance's direct subject (from a caller)
        rather than its inbox (from a router). That, not the body's ``direct`` flag,
        decides how the call is admitted and run: the body is whatever its sender wrote,
        the subject is what NATS let it publish on.
        """
        raw = read_call(data, self._codec.max_envelope)
        if raw is not None:
            call = call_fields(raw)
        else:
            try:
                call = Call.from_request(self._codec.decode_envelope(data, CallRequest))
            except CodecError as e:
                return self.error("", e.code, e.message)
        call.direct = direct
        return call

    async def run(
        self,
        request: Call,
        headers: Mapping[str, str] | None = None,
        *,
        answer: Answer | None = None,
    ) -> tuple[bytes, str | None]:
        """Handle one call; return the encoded reply, and the reason when the call was
        refused unrun (fenced or stale epoch). Never raises ``Exception``.

        ``headers``: the message's, where the caller's trace context travels; the call runs
        in a span that continues it (see ``_tracing``). ``answer``: called with the reply
        of a handler that ran here, before its outcome is stored (the reply is returned all
        the same).
        """
        arrived = time.perf_counter()
        with serving_call(
            headers,
            request.service,
            request.method,
            request.call_id,
            self.instance_id,
            request.delivery,
        ) as traced:
            refused = self._admit(request) if self._admit is not None else None
            if refused is None:
                try:
                    reply = await self._handle(request, answer)
                except _Refused as e:
                    refused = e.reason
                else:
                    if not request.direct:
                        self.answered.add(request.method, reply, time.perf_counter() - arrived)
                    return reply, None
            if traced is not None:
                traced.set("ipc.refused", refused)
            return self._refusal(request, refused), refused

    def _refusal(self, request: Call, reason: str) -> bytes:
        message = _REFUSALS.get(reason, "call {call_id} refused ({reason})").format(
            call_id=request.call_id,
            epoch=request.epoch,
            instance=self.instance_id,
            reason=reason,
        )
        if request.direct:  # a caller's routing cache behind the router: it falls back
            self._problems.log(
                logging.DEBUG,
                "refused-direct",
                "refused direct call %s unrun: %s",
                clip(request.call_id),
                clip(message),
            )
        else:
            self._problems.warning(
                "refused",
                "refused call %s unrun (the router routes it again): %s",
                clip(request.call_id),
                clip(message),
            )
        return self.error(request.call_id, ErrorCode.FAILED_PRECONDITION, message)

    async def _handle(self, request: Call, answer: Answer | None = None) -> bytes:
        call_id = request.call_id
        key = (request.method, request.caller, call_id)
        running = self._running.get(key)
        if running is not None:
            # The same call, delivered here again while its first run is still going.
            return await asyncio.shield(running)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            reply = await self._execute(request, answer)
        except _Refused as e:
            future.set_exception(e)  # a repeat waiting on this run is refused with it
            future.add_done_callback(lambda f: f.exception())  # retrieved if nobody waits
            raise
        except Exception:  # a bug here must still answer, or the caller waits it out
            self._problems.exception("serving", "serving call %s failed", clip(call_id))
            reply = self.error(call_id, ErrorCode.INTERNAL, "the instance failed the call")
        except BaseException:
            future.cancel()  # a repeat waiting on this run is cancelled with it
            raise
        finally:
            del self._running[key]
        future.set_result(reply)
        return reply

    async def _execute(self, request: Call, answer: Answer | None = None) -> bytes:
        """Run one call at most once (or find its outcome) and return the encoded reply."""
        codec = self._codec
        call_id = request.call_id
        spec = self._service.methods.get(request.method)
        if request.service != self._name or spec is None:
            known = ", ".join(sorted(self._service.methods))
            return self.error(
                call_id,
                ErrorCode.NOT_FOUND,
                f"{request.service}.{request.method} is not served here (methods: {known})",
            )
        if request.deadline is not None and request.deadline <= time.time():
            return self.error(
                call_id, ErrorCode.DEADLINE_EXCEEDED, "the deadline passed before the call ran"
            )
        if request.direct:
            return await self._run_unrecorded(spec, request)
        try:
            # Keyed by the caller the router read off the call's subject: one caller's
            # call_id neither reads nor pre-empts another's record.
            caller = validate_token(request.caller or "", "caller")
        except ValueError as e:
            return self.error(call_id, ErrorCode.INVALID_ARGUMENT, str(e))
        try:
            claimed = await self.ledger.claim(
                f"{self._name}.{spec.name}.{caller}.{call_id}",
                request.deadline,
                abandoned=request.abandoned,
            )
        except IPCError as e:
            return self.error(call_id, e.code, e.message, details=e.details)
        if isinstance(claimed, bytes):
            return claimed  # an earlier run's outcome
        late = self._admit(request) if self._admit is not None else None
        if late is not None:
            # The claim took long enough for the lease to run out (a slow store, a
            # reconnect): a standby may be active by now. Give the call back, unrun.
            await self.ledger.release(claimed)
            raise _Refused(late)
        try:
            argument = codec.decode(request.payload, spec.request_type)
        except CodecError as e:
            await self.ledger.release(claimed)
            return self.error(call_id, ErrorCode.INVALID_ARGUMENT, e.message)
        try:
            reply, keep = await self._run(spec, argument, request)
        except Exception:  # a bug after the claim: record it, never leave the claim behind
            self._problems.exception(
                "claimed", "call %s failed after it was claimed", clip(call_id)
            )
            reply, keep = self.error(call_id, ErrorCode.INTERNAL, "the instance failed"), True
        except asyncio.CancelledError:
            # stop() gave up waiting. The handler may have done part of its work, so the
            # call must not run again: record that its outcome is unknown.
            reply = self.error(
                call_id,
                ErrorCode.ABORTED,
                f"instance {self.instance_id} stopped while the call was running; its "
                "effects are unknown (check downstream by call_id)",
                retryable=False,
            )
            keep = True
        if answer is not None:
            await answer(reply)  # the outcome's write goes out right behind it
        if not keep:
            await self.ledger.release(claimed)
        elif not await self.ledger.finish(claimed, reply):
            # The caller still gets its reply; a repeat would find no outcome and wait.
            self._problems.error("not-recorded", "outcome of call %s not recorded", clip(call_id))
        return reply

    async def _run_unrecorded(self, spec: MethodSpec, request: Call) -> bytes:
        """A direct call: run at most once, neither claimed nor recorded."""
        try:
            argument = self._codec.decode(request.payload, spec.request_type)
        except CodecError as e:
            return self.error(request.call_id, ErrorCode.INVALID_ARGUMENT, e.message)
        reply, _ = await self._run(spec, argument, request)
        return reply

    async def _run(self, spec: MethodSpec, argument: Any, request: Call) -> tuple[bytes, bool]:
        """Run the handler; return the reply and whether to record it.

        A retryable error the handler raises is not recorded, so a retry runs again.
        """
        ctx = CallContext(
            call_id=request.call_id,
            service=self._name,
            method=spec.name,
            instance_id=self.instance_id,
            resource_id=request.resource_id,
            deadline=request.deadline,
            caller=request.caller,
            epoch=request.epoch,
            delivery=request.delivery,
            trace_id=current_trace_id(),
        )
        codec = self._codec
        started = time.perf_counter()
        try:
            try:
                result = await spec.invoke(argument, ctx)
            finally:
                self._metrics.handler_done(self._name, spec.name, time.perf_counter() - started)
            payload = codec.encode(result)
        except IPCError as e:
            failed(e, code=e.code.value, message=e.message)
            error = self.error(
                request.call_id, e.code, e.message, details=e.details, retryable=e.retryable
            )
            return error, not e.retryable
        except Exception as e:
            failed(e)
            # One traceback per method and interval: a caller's bad input can fail every call.
            self._problems.exception(
                f"handler {spec.name}",
                "%s.%s failed (call %s)",
                self._name,
                spec.name,
                clip(request.call_id),
            )
            text = f"{type(e).__name__}: {e}"[:_MAX_ERROR_MESSAGE]
            return self.error(request.call_id, ErrorCode.INTERNAL, text), True
        # The CallReply's MessagePack map, packed as encode_envelope would (fields in order,
        # none null), without building the model: this runs for every call.
        reply = {
            "v": PROTOCOL_VERSION,
            "call_id": request.call_id,
            "payload": payload,
            "service": self._name,
            "instance": self.instance_id,
        }
        return _pack(reply), True

    def error(
        self,
        call_id: str,
        code: ErrorCode,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> bytes:
        info = ErrorInfo(
            code=code,
            message=message[:_MAX_ERROR_MESSAGE],
            details=details or {},
            retryable=code.retryable if retryable is None else retryable,
        )
        reply = CallReply(
            call_id=call_id, error=info, service=self._name, instance=self.instance_id
        )
        try:
            return self._codec.encode_envelope(reply)
        except CodecError:
            # Details the codec cannot carry (or too many): the error still gets through.
            plain = info.model_copy(update={"details": {"dropped": "details not encodable"}})
            return self._codec.encode_envelope(reply.model_copy(update={"error": plain}))
