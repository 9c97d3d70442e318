"""Wire contracts: the envelopes every AegisIPC process exchanges.

Every envelope carries ``v``, the protocol version. A peer that receives a version it does not
speak refuses the envelope with ``CodecError(UNSUPPORTED_VERSION)`` instead of guessing.
Envelopes ignore fields they do not know, so a newer peer may add optional fields without
breaking an older one; removing or retyping a field needs a new protocol version.

Application payloads (call arguments and results) travel inside envelopes as opaque
MessagePack bytes, so the router can route an envelope without decoding or validating the
payload it carries.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1
"""The envelope protocol version this SDK speaks."""

REPLY_TO_HEADER = "Ipc-Reply-To"
"""NATS header repeating a call's reply address, so that a router can answer even a request
whose body it cannot read (a newer protocol version, a broken envelope)."""

REFUSED_HEADER = "Ipc-Refused"
"""NATS header on an instance's refusal of a call it must not run (``fenced``: its lease ran
out; ``stale-epoch``: routed before its role changed). The router routes such a call again
instead of relaying the refusal."""

MSG_ID_HEADER = "Nats-Msg-Id"
"""JetStream's de-duplication header; the SDK sets it to the call_id."""

LEASE_FRACTION = 0.8
"""The instances' lease as a share of the router's heartbeat timeout. Below 1 so that an
instance cut off from the router fences itself before the router can promote another in its
place."""


class AdminOp(StrEnum):
    """The names of the request/reply operations the routers answer.

    On ``<prefix>.admin.<op>`` any router answers the operator operations (``status`` itself,
    the rest by asking the leader). On ``<prefix>.ctl.<op>`` the leading router answers the
    instances' own operations (``register``, ``deregister``, and ``drain`` for an instance
    that is stopping) and the operator operations forwarded to it.
    """

    STATUS = "status"
    SERVICES = "services"
    INSTANCES = "instances"
    ROUTES = "routes"
    PROMOTE = "promote"
    DRAIN = "drain"
    REGISTER = "register"
    DEREGISTER = "deregister"
    DESCRIBE = "describe"
    STATS = "stats"


class EventKind(StrEnum):
    """The kinds of ``RouterEvent``, one subject each: ``<prefix>.events.<kind>``."""

    ROLE = "role"
    HEALTH = "health"
    REGISTRY = "registry"


class ErrorCode(StrEnum):
    """Closed set of status codes, in the spirit of gRPC's."""

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"

    @property
    def retryable(self) -> bool:
        """Whether a retry with the same call_id may succeed where this attempt did not."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {ErrorCode.UNAVAILABLE, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.ABORTED, ErrorCode.CANCELLED}
)


class ErrorInfo(BaseModel):
    """The one error model that travels in an envelope's ``error`` field."""

    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    retryable: bool = False


class Envelope(BaseModel):
    """Base of every envelope: a protocol version, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = PROTOCOL_VERSION


class CallRequest(Envelope):
    """An RPC request: who to call, with what, and until when.

    ``deadline`` is absolute (Unix seconds); ``epoch`` is the routing epoch the call was
    routed under, used to fence a former active.
    """

    call_id: str
    service: str
    method: str
    payload: bytes
    resource_id: str | None = None
    deadline: float | None = None
    reply_to: str | None = None
    caller: str | None = None
    epoch: int | None = None
    delivery: int = 1
    """How many times the router has been handed this request (above 1: a redelivery)."""
    abandoned: str | None = None
    """An instance the router gave up on while it held this call (it died or froze): a
    claim it left is not waited for past the instance's grace, and the call is answered
    ``UNKNOWN``."""
    direct: bool = False
    """Sent straight to the instance by the caller (``durable=False``), not through the
    router: run at most once, neither claimed nor recorded. The instance refuses it unless
    ``epoch`` is its own epoch and it holds the role the call needs."""
    ack: str | None = None
    """Set by the router on a call it forwards: the ack subject of the call's message in
    the calls stream. The instance answers the caller itself (the forwarded message's
    reply subject), and reports the end of the call to ``done`` with this as the body:
    ``ack`` once the outcome is recorded, ``nak`` for a call it refuses unrun (the router
    then naks it, and JetStream delivers it again to be routed again)."""
    done: str | None = None
    """Set with ``ack``: where the instance reports on the call, ``<done>.<service>.<verb>``
    (the forwarding router's subject; only routers ack the calls stream)."""
    ack_wait: float | None = None
    """Set with ``ack``: seconds JetStream waits for that ack before it delivers the call
    again; the instance reports a longer call as still running (``wpi``)."""
    router: str | None = None
    """Set with ``ack``: the id of the router that forwarded the call (for logs and
    traces)."""


class CallReply(Envelope):
    """The answer to a ``CallRequest``: a payload or an error, never both."""

    call_id: str
    payload: bytes | None = None
    error: ErrorInfo | None = None
    service: str | None = None
    instance: str | None = None


MAX_REPORTED_METHODS = 256
"""Methods one heartbeat reports calls for at most (an instance answers for the methods it
registered); a heartbeat with more is refused whole."""


class Heartbeat(Envelope):
    """An instance's proof of life; ``sent_at`` is the sender's Unix time."""

    service: str
    instance_id: str
    sent_at: float
    role: str | None = None
    epoch: int | None = None
    inflight: int = 0
    session: str | None = None
    seq: int = 0
    """Numbers the heartbeats of one process; the router's answer echoes it."""
    draining: bool = False
    """The instance knows it is draining, and has refused direct calls since: a handover
    waits for a heartbeat that says so and reports no call running."""
    calls: (
        Annotated[
            dict[str, tuple[dict[str, int], list[int], float]],
            Field(max_length=MAX_REPORTED_METHODS),
        ]
        | None
    ) = None
    """The durable calls answered since the last heartbeat, by method: [count per outcome
    (``ok`` or a lower-case error code), count per duration bucket (``DURATION_BUCKETS``,
    then one past the last bound), seconds in all]; durations run from the call's arrival
    to its answer."""


class MethodContract(BaseModel):
    """One method's contract as an instance registers it: request and response as JSON
    Schema (MessagePack-specific types marked ``x-msgpack``), durability and summary.

    ``request``/``response`` are None when the model is not describable, or when the
    contract was too large to register (``truncated`` then holds its size in bytes).
    """

    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    durable: bool = True
    summary: str = ""
    truncated: int | None = None


MAX_CONTRACTS_BYTES = 256 * 1024
"""The most contract JSON one registration carries, all methods together: well under NATS's
default max payload (1 MiB), so that a service with many methods still registers."""


def contract_version(contract: MethodContract) -> str:
    """The version of a contract: a short hash of its request and response schemas and its
    durability (the summary is left out: a reworded docstring is not a new contract)."""
    text = json.dumps(
        [contract.request, contract.response, contract.durable],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Registration(Envelope):
    """An instance announcing itself, its methods and the resources it claims."""

    service: str
    instance_id: str
    methods: list[str] = Field(default_factory=list)
    resources: list[str] = Field(default_factory=list)
    sdk_version: str | None = None
    load_balanced: bool = False
    """Spread calls without a claimed resource over every healthy instance instead of
    sending them to the service's active."""
    session: str | None = None
    """Random per process: tells a restarted instance from a second copy of a live one."""
    direct_methods: list[str] = Field(default_factory=list)
    """Methods declared ``durable=False``: callers send them straight to the instance by
    default (at most once), unless a call asks for ``durable=True``."""
    direct: bool = False
    """The instance takes direct calls: it admits one only under its own epoch, in a role it
    holds, with a valid lease and no handover under way, and its heartbeats say whether it
    knows it is draining. Callers never send direct calls to an instance without it (an
    older SDK), and handovers do not wait for its drain to be acknowledged."""
    contracts: dict[str, MethodContract] | None = None
    """Each method's contract, by method name (None: an older SDK that sends none). The
    router keeps them for the ``describe`` operation; at most ``MAX_CONTRACTS_BYTES`` of
    JSON in all."""


class RegistrationResult(BaseModel):
    """The router's answer to a registration: the role and the claims granted."""

    service: str
    instance_id: str
    role: str
    epoch: int
    claimed: list[str] = Field(default_factory=list)
    standby_for: dict[str, str] = Field(default_factory=dict)
    """Resources this instance asked for that another instance already owns: owner by id."""
    lease: float = 0.0
    """Seconds, counted from when a heartbeat was sent, for which the router's answer to it
    lets the instance take calls. Shorter than ``heartbeat_timeout``, so an instance cut off
    from the router stops before the router can promote anyone in its place."""
    heartbeat_timeout: float = 0.0
    """The router's failure detection timeout."""


class InstanceState(BaseModel):
    """What the router tells an instance about itself: in every answer to a heartbeat, and
    at once when one of its roles changes."""

    role: str
    epoch: int
    owned: list[str] | None = None
    """The claimed resources it is the active of (None: unchanged since the last answer)."""
    seq: int | None = None
    """The heartbeat this answers (None for a role change announced on its own)."""
    lease: float = 0.0
    draining: bool = False
    """A handover is under way: refuse direct calls (callers fall back to the router)."""


class InstanceInfo(BaseModel):
    """One registered instance, as the ``instances`` admin operation reports it."""

    service: str
    instance_id: str
    role: str
    health: str
    epoch: int
    heartbeat_age_s: float
    inflight: int
    """Calls the leading router has sent it and not yet seen answered."""
    owned: list[str] = Field(default_factory=list)
    """Claimed resources it is the active of."""
    standby_for: list[str] = Field(default_factory=list)
    """Claimed resources it queues for."""
    methods: list[str] = Field(default_factory=list)
    draining: bool = False
    registered_at: float = 0.0


class ServiceInfo(BaseModel):
    """One service, as the ``services`` admin operation reports it."""

    service: str
    mode: str
    """``active-standby`` or ``load-balanced``."""
    active: str | None
    instances: int
    healthy: int
    methods: list[str] = Field(default_factory=list)
    claimed_resources: int = 0


class RouteInfo(BaseModel):
    """Where a resource's calls go, as the ``routes`` admin operation reports it."""

    service: str
    resource: str
    kind: str
    """``claim`` (first come, first served; standbys queue) or ``assignment`` (sticky, in a
    load-balanced service)."""
    instance: str
    standbys: list[str] = Field(default_factory=list)


class ContractVersion(MethodContract):
    """One version of a method's contract and the instances that registered it."""

    version: str
    """A hash of the request and response schemas and the durability (``contract_version``)."""
    instances: list[str] = Field(default_factory=list)


class MethodDescription(BaseModel):
    """One method of a service, as the ``describe`` operation reports it."""

    method: str
    versions: list[ContractVersion] = Field(default_factory=list)
    """Every contract registered for it, the one most instances serve first: more than one
    means that instances disagree (a half-upgraded service)."""

    @property
    def consistent(self) -> bool:
        """Whether every instance that registered a contract registered the same one."""
        return len(self.versions) <= 1

    @property
    def contract(self) -> ContractVersion | None:
        """The contract most instances registered (None: none registered one)."""
        return self.versions[0] if self.versions else None


class ServiceDescription(BaseModel):
    """One service's contracts, as the ``describe`` operation reports them."""

    service: str
    methods: list[MethodDescription] = Field(default_factory=list)
    without_contracts: list[str] = Field(default_factory=list)
    """Instances registered without contracts (an older SDK)."""


class DrainResult(BaseModel):
    """The result of the ``drain`` admin operation."""

    service: str
    instance_id: str
    draining: bool
    drained: bool
    """True when no call was in flight to it any more before the timeout and every role it
    held has passed to a standby."""
    inflight: int
    role: str
    owned: list[str] = Field(default_factory=list)
    """Resources it still owns (no healthy standby could take them)."""
    reason: str | None = None
    """Why it is not drained: calls still in flight, or roles no standby can take."""


class Promotion(BaseModel):
    """The result of the ``promote`` admin operation."""

    service: str
    instance_id: str
    role: str
    epoch: int
    owned: list[str] = Field(default_factory=list)
    """The claimed resources it is the active of now."""
    demoted: list[str] = Field(default_factory=list)
    """The instances that handed roles over to it."""


class RouterEvent(Envelope):
    """A change the leading router publishes on ``<prefix>.events.<kind>``.

    ``kind`` is ``role`` (``role``, ``epoch``, ``resource``: None for the service, and
    ``reason``: failover, handover, promote, removed, registered), ``health`` (``state``:
    healthy or unhealthy) or ``registry`` (``state``: registered, deregistered, reaped,
    draining, undrained: routed to again).
    """

    kind: str
    service: str
    instance_id: str
    at: float
    state: str | None = None
    role: str | None = None
    epoch: int | None = None
    resource: str | None = None
    reason: str | None = None


class Published(Envelope):
    """An event published on ``<prefix>.pub.<topic>``: the payload as opaque MessagePack."""

    topic: str
    payload: bytes
    event_id: str
    published_at: float
    publisher: str | None = None


class DeadLetter(Envelope):
    """An event a subscriber could not take, on ``<prefix>.dlq.<topic>``: the original
    event, why it failed, and after how many deliveries."""

    event: Published
    error: ErrorInfo
    subscriber: str
    """The durable name, or ``<client name>/<topic pattern>`` for a plain subscription."""
    deliveries: int
    failed_at: float


class AdminRequest(Envelope):
    """An operator command sent on ``<prefix>.admin.<op>``."""

    op: str
    args: dict[str, Any] = Field(default_factory=dict)


class AdminReply(Envelope):
    """The router's answer to an ``AdminRequest``: a result or an error."""

    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None


class NatsServerInfo(BaseModel):
    """What the router knows of the NATS server it is connected to."""

    server_id: str | None = None
    server_name: str | None = None
    version: str | None = None
    cluster: str | None = None
    connected_url: str | None = None
    jetstream: bool = False
    embedded: bool = False
    """True when the router started this nats-server itself."""


class RouterStatus(BaseModel):
    """The result of the ``status`` admin operation."""

    router_id: str
    version: str
    protocol_version: int
    subject_prefix: str
    started_at: datetime
    uptime_s: float
    nats: NatsServerInfo
    services: int
    instances: int
    leader: bool | None = None
    """Whether the answering router leads (registers instances and routes calls)."""


class CallStats(BaseModel):
    """One method's calls over some seconds (part of ``MethodStats``)."""

    calls: int
    errors: int
    """Calls whose outcome was not ``ok``."""
    rate: float
    """Calls per second."""
    error_rate: float | None = None
    """``errors / calls`` (0 to 1); None without calls."""
    p50_s: float | None = None
    """Median routed time in seconds, estimated from the histogram's buckets."""
    p90_s: float | None = None
    p99_s: float | None = None
    outcomes: dict[str, int] = Field(default_factory=dict)
    """Calls by outcome: ``ok`` or an error code in lower case."""


class MethodStats(BaseModel):
    """One (service, method) pair as the leading router counted it: ``_other`` for calls
    to names no registered instance serves, and past the router's label cap."""

    service: str
    method: str
    total: CallStats
    """Since the router started; the rate over the seconds it has led."""
    window: CallStats | None = None
    """The last full window; None until the router has led for one."""


class RouterStats(BaseModel):
    """The result of the ``stats`` admin operation: the leading router's counters, the
    numbers its ``/metrics`` shows."""

    router_id: str
    led_s: float
    """Seconds the router has led since it started."""
    window_s: float | None = None
    """Length of the last full window (10 s); None before the first one ends."""
    methods: list[MethodStats] = Field(default_factory=list)
