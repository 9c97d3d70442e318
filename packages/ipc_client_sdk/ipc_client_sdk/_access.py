"""The permission model NATS enforces: what each identity may publish and subscribe to.

Three roles, each an NKey user in the ``authorization`` block ``ipc auth`` writes:

- **router**: everything under the prefix, the replies it sends to any inbox, and the
  JetStream API of its own streams and buckets (named after the prefix), nothing else.
- **operator**: the admin subjects (``<prefix>.admin.>``) and the router events
  (``ipc watch``); no calls, no serving, no JetStream.
- **service NAME**: call the services it may call (all, or those given); serve, heartbeat,
  register, drain and deregister only as ``NAME``; read and write only ``NAME``'s results
  keys; receive only ``NAME``'s instance subjects and its own replies; publish and
  subscribe events; read (never write) the registry and routes buckets for direct calls.

Every identity subscribes to its own replies only (``_INBOX.<public key>.>``, the prefix
``Credentials`` derives), and answers what it receives through ``allow_responses`` rather
than a right to publish into other identities' inboxes. Everything not granted is denied:
NATS drops the message (and tells the publisher through an asynchronous error) or refuses
the subscription.

The subjects come from ``Subjects``, so the permissions follow the subject map.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ipc_client_sdk._contracts import AdminOp
from ipc_client_sdk._credentials import reply_prefix
from ipc_client_sdk._subjects import Subjects, validate_token

_API = "$JS.API"


class Role(enum.StrEnum):
    """What an identity is for."""

    ROUTER = "router"
    OPERATOR = "operator"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Identity:
    """One NKey user of a deployment.

    Attributes:
        name: ``router``, ``operator``, or the service's name (also the seed file's stem).
        role: what it is for.
        public_key: its public NKey (``U...``); never the seed.
        calls: the services a service identity may call; None for every service.
    """

    name: str
    role: Role
    public_key: str
    calls: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        validate_token(self.name, "identity name")
        if not (self.public_key.startswith("U") and self.public_key.isalnum()):
            raise ValueError(f"{self.public_key[:8]!r}... is not a user public NKey")
        for service in self.calls or ():
            validate_token(service, "service")


@dataclass(frozen=True, slots=True)
class Grants:
    """Subjects an identity may publish to and subscribe to (``>``/``*`` wildcards)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True


def _names(subjects: Subjects) -> dict[str, str]:
    """Each JetStream stream of the deployment, by what it is."""
    return {
        "calls": subjects.calls_stream,
        "events": subjects.events_stream,
        "dead_letters": subjects.dead_letter_stream,
        "registry": f"KV_{subjects.registry_bucket}",
        "routes": f"KV_{subjects.routes_bucket}",
        "leases": f"KV_{subjects.leases_bucket}",
        "results": f"KV_{subjects.results_bucket}",
        "contracts": f"KV_{subjects.contracts_bucket}",
    }


def _owned_stream(stream: str) -> list[str]:
    """The JetStream API of one stream for its owner (the router)."""
    return [
        f"{_API}.STREAM.*.{stream}",
        f"{_API}.STREAM.MSG.*.{stream}",
        f"{_API}.DIRECT.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}.>",
        f"{_API}.CONSUMER.*.{stream}",
        f"{_API}.CONSUMER.*.{stream}.>",
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _watch(stream: str) -> list[str]:
    """Read-only watches of a bucket (ordered consumers, as nats-py's ``watch`` makes)."""
    return [
        f"{_API}.STREAM.INFO.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}.>",
        f"{_API}.CONSUMER.INFO.{stream}.*",
        f"{_API}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _durable_consumers(stream: str) -> list[str]:
    """Durable pull consumers on a stream: create, bind, fetch, ack, delete."""
    return [
        f"{_API}.STREAM.INFO.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}.>",
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{_API}.CONSUMER.INFO.{stream}.*",
        f"{_API}.CONSUMER.DELETE.{stream}.*",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
    ]


def permissions(subjects: Subjects, identity: Identity) -> Grants:
    """What ``identity`` may do in the deployment of ``subjects``."""
    p = subjects.prefix
    inbox = f"{reply_prefix(identity.public_key)}.>"
    streams = _names(subjects)
    if identity.role is Role.ROUTER:
        buckets = (
            subjects.registry_bucket,
            subjects.routes_bucket,
            subjects.leases_bucket,
            subjects.results_bucket,
            subjects.contracts_bucket,
        )
        publish = [f"{p}.>", "_INBOX.>", f"{_API}.INFO"]
        publish += [f"$KV.{b}.>" for b in buckets]
        for stream in streams.values():
            publish += _owned_stream(stream)
        return Grants(tuple(publish), (f"{p}.>", inbox))
    if identity.role is Role.OPERATOR:
        return Grants((f"{p}.admin.>",), (inbox, f"{p}.events.>"), allow_responses=False)
    name = identity.name
    callees: Sequence[str] = identity.calls if identity.calls is not None else ("*",)
    results = subjects.results_bucket
    publish = []
    for callee in callees:
        # Durable calls as itself only: the caller token is what keys its records.
        publish += [f"{p}.call.{callee}.*.{name}", f"{p}.inst.{callee}.*.*.d"]
    publish += [
        f"{p}.hb.{name}.*",
        *(subjects.control(op, name) for op in _INSTANCE_OPS),
        f"{p}.pub.>",
        f"{p}.dlq.>",
        # The contracts of the services it calls (``ipc call`` checks a request against them).
        subjects.admin(AdminOp.DESCRIBE),
        f"$KV.{results}.{name}.>",
        # Its instances' reports on the calls a router forwarded to them (the router acks;
        # no service may publish on the calls stream's ack subjects).
        f"{p}.done.*.{name}.*",
        # No STREAM.INFO on the results bucket: with a subjects filter it lists every key.
        f"{_API}.INFO",
        f"{_API}.DIRECT.GET.{streams['results']}.$KV.{results}.{name}.>",
        *_watch(streams["registry"]),
        *_watch(streams["routes"]),
        *_durable_consumers(streams["events"]),
    ]
    subscribe = (inbox, f"{p}.inst.{name}.>", f"{p}.pub.>")
    return Grants(tuple(dict.fromkeys(publish)), subscribe)


_INSTANCE_OPS = (AdminOp.REGISTER, AdminOp.DEREGISTER, AdminOp.DRAIN)


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in items) + "]"


def authorization_block(subjects: Subjects, identities: Iterable[Identity]) -> str:
    """An ``authorization`` block admitting ``identities`` (NKey users) with their
    permissions, and nobody else (no anonymous user)."""
    lines = ["authorization {", "  users: ["]
    for identity in identities:
        perms = permissions(subjects, identity)
        lines += [
            f"    # {identity.role.value} {identity.name}",
            "    {",
            f"      nkey: {json.dumps(identity.public_key)}",
            "      permissions: {",
            f"        publish: {{ allow: {_list(perms.publish)} }}",
            f"        subscribe: {{ allow: {_list(perms.subscribe)} }}",
        ]
        if perms.allow_responses:
            lines.append("        allow_responses: true")
        lines += ["      }", "    }"]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
