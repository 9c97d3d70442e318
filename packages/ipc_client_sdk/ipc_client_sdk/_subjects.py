"""The subject map: every NATS subject and JetStream name AegisIPC uses, under one prefix.

Router, SDK and CLI all build subjects here, so they cannot disagree. The table is
documented in docs/architecture.md.
"""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass

DEFAULT_PREFIX = "ipc"

# One subject token: no dots, wildcards or white space (NATS's own rules, made strict).
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
# Prefix tokens are narrower still, so that the prefix -> JetStream name mapping ('.' -> '_',
# upper-cased) is one-to-one: 'desk1.ipc' and 'desk1_ipc' must not share a stream.
_PREFIX_TOKEN = re.compile(r"^[a-z0-9]+$")


MAX_TOKEN_LENGTH = 128
"""The longest name, id or call_id: subjects and KV keys built from several of them must
stay far below NATS's 4 KiB protocol line, which a server enforces by closing the
connection."""


def validate_token(value: str, what: str) -> str:
    """Return ``value`` if it can be one NATS subject token, else raise ``ValueError``.

    Service names, method names, instance ids, resource ids and call ids each become one
    token of a subject or KV key: 1 to 128 letters, digits, '_' or '-'.
    """
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be non-empty and use only letters, digits, '_' and '-'"
        )
    if len(value) > MAX_TOKEN_LENGTH:
        raise ValueError(f"{what} must be at most {MAX_TOKEN_LENGTH} characters")
    return value


def validate_call_id(value: str) -> str:
    """Return ``value`` if it can be a call_id (a subject token and a KV key), else raise.

    Raises:
        ValueError: empty, too long, or characters other than letters, digits, '_' and '-'.
    """
    return validate_token(value, "call_id")


_MAX_TOPIC = 255
_MAX_TOPIC_TOKENS = 16


def validate_topic(topic: str, *, wildcards: bool = False) -> str:
    """Check a topic (``md.ticks.AAPL``) or, with ``wildcards``, a topic pattern
    (``md.ticks.*``, ``md.>``): 1 to 16 tokens joined by dots, at most 255 characters.

    Raises:
        ValueError: it is not one, and why.
    """
    if not isinstance(topic, str) or not topic or len(topic) > _MAX_TOPIC:
        raise ValueError(f"a topic is 1 to {_MAX_TOPIC} characters, got {topic!r}")
    tokens = topic.split(".")
    if len(tokens) > _MAX_TOPIC_TOKENS:
        raise ValueError(f"a topic has at most {_MAX_TOPIC_TOKENS} tokens, got {topic!r}")
    for i, token in enumerate(tokens):
        if wildcards and (token == "*" or (token == ">" and i == len(tokens) - 1)):
            continue
        if token in ("*", ">"):
            where = "a topic pattern's last token" if token == ">" else "a topic pattern"
            allowed = "only in " + where if wildcards else "not in a topic you publish on"
            raise ValueError(f"wildcard {token!r} is allowed {allowed}: {topic!r}")
        if not _TOKEN.fullmatch(token):
            raise ValueError(
                f"topic {topic!r}: {token!r} is not a token (letters, digits, '_' and '-')"
            )
    return topic


def validate_prefix(text: str) -> str:
    """Return ``text`` if it can be a deployment's subject prefix, else raise ``ValueError``.

    A prefix is one or more tokens of lowercase letters and digits joined by dots (``ipc``,
    ``desk1.ipc``).
    """
    for token in text.split("."):
        if not _PREFIX_TOKEN.fullmatch(token):
            raise ValueError(
                f"subject prefix {text!r} must be dot-separated tokens of lowercase "
                "letters and digits, like 'ipc' or 'desk1.ipc'"
            )
    return text


_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_call_id() -> str:
    """A new call_id: 16 hex digits of nanosecond time, then 16 random hex digits.

    Sortable by creation time (to the nanosecond within one host), unique without
    coordination, and safe as a subject token and a KV key. The random part comes from a
    generator seeded from the OS once per process (and again in a forked child), not a
    system call per id: ids must be unique, not secret.
    """
    return f"{time.time_ns():016x}{_ids.getrandbits(64):016x}"


@dataclass(frozen=True, slots=True)
class Subjects:
    """Subjects and JetStream names for one prefix (default ``ipc``).

    The prefix is one or more tokens of lowercase letters and digits joined by dots (``ipc``,
    ``desk1.ipc``). JetStream stream and bucket names derive from it one-to-one, so two
    prefixes on one NATS server never share state.
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)

    @property
    def _name(self) -> str:
        return self.prefix.replace(".", "_").upper()

    # --- admin ---------------------------------------------------------------------------
    def admin(self, op: str) -> str:
        """Admin operation ``op`` (request/reply, answered by any router)."""
        return f"{self.prefix}.admin.{validate_token(op, 'admin operation')}"

    @property
    def admin_all(self) -> str:
        """Wildcard a router subscribes to for every admin operation."""
        return f"{self.prefix}.admin.*"

    @property
    def control_all(self) -> str:
        """Wildcard a router subscribes to for every control operation, scoped or not."""
        return f"{self.prefix}.ctl.>"

    def control(self, op: str, service: str | None = None) -> str:
        """Control operation ``op``: request/reply, answered by the leading router.

        An instance's own operations (register, deregister, drain) carry its service as the
        last token (``<prefix>.ctl.register.<service>``), so that NATS permissions can let a
        service's identity send them for that service only; the router checks the request's
        ``service`` against it. Operations routers pass on to the leader carry none.
        """
        subject = f"{self.prefix}.ctl.{validate_token(op, 'control operation')}"
        return subject if service is None else f"{subject}.{validate_token(service, 'service')}"

    # --- publish/subscribe -------------------------------------------------------------
    def topic(self, topic: str) -> str:
        """Where events on ``topic`` (dot-separated tokens, no wildcards) are published."""
        return f"{self.prefix}.pub.{validate_topic(topic)}"

    def topic_pattern(self, pattern: str) -> str:
        """What a subscription to ``pattern`` (tokens, ``*`` for one, ``>`` for the rest)
        listens on."""
        return f"{self.prefix}.pub.{validate_topic(pattern, wildcards=True)}"

    def topic_of(self, subject: str) -> str:
        """The topic an event subject carries."""
        return subject[len(self.prefix) + len(".pub.") :]

    @property
    def events_stream(self) -> str:
        """Stream that keeps published events, for durable subscriptions to replay."""
        return f"{self._name}_EVENTS"

    @property
    def events_stream_subjects(self) -> str:
        """Subjects the events stream captures."""
        return f"{self.prefix}.pub.>"

    def dead_letter(self, topic: str) -> str:
        """Where events on ``topic`` that a subscriber could not take go."""
        return f"{self.prefix}.dlq.{validate_topic(topic)}"

    @property
    def dead_letter_stream(self) -> str:
        """Stream that keeps dead letters for inspection."""
        return f"{self._name}_DLQ"

    @property
    def dead_letter_all(self) -> str:
        """Subjects the dead-letter stream captures."""
        return f"{self.prefix}.dlq.>"

    # --- calls ---------------------------------------------------------------------------
    def call(self, service: str, method: str, caller: str) -> str:
        """Where ``caller`` publishes a request; captured by the calls stream.

        The caller's name is the last token, so that NATS permissions let an identity
        publish as itself only; the router takes the caller from here, never from the body,
        and the instance keys its record of the call by it (one caller cannot read or
        pre-empt another's call_id).
        """
        return (
            f"{self.prefix}.call.{validate_token(service, 'service')}."
            f"{validate_token(method, 'method')}.{validate_token(caller, 'caller')}"
        )

    def instance_inbox(self, service: str, instance_id: str, session: str) -> str:
        """Where the router delivers calls to one instance process (core request/reply).

        The session (random per process) is part of the subject, so a process that lost its
        instance id to a newer one never receives that instance's calls.
        """
        return (
            f"{self.prefix}.inst.{validate_token(service, 'service')}."
            f"{validate_token(instance_id, 'instance_id')}.{validate_token(session, 'session')}"
        )

    def instance_direct(self, service: str, instance_id: str, session: str) -> str:
        """Where callers send direct calls (``durable=False``) to one instance process.

        One token deeper than the inbox, so that NATS permissions tell the two apart: only
        the router may publish on the inbox, a caller only here. The instance decides
        whether a call is direct from the subject it arrived on, never from its body.
        """
        return f"{self.instance_inbox(service, instance_id, session)}.d"

    def instance_control(self, service: str, instance_id: str, session: str) -> str:
        """Where the router tells one instance process its role, epoch and lease (the
        answers to its heartbeats, and role changes as they happen)."""
        return f"{self.instance_inbox(service, instance_id, session)}.ctl"

    def events(self, kind: str) -> str:
        """Where the leading router publishes events of one kind: ``role``, ``health``,
        ``registry``."""
        return f"{self.prefix}.events.{validate_token(kind, 'event kind')}"

    @property
    def events_all(self) -> str:
        """Wildcard for every router event."""
        return f"{self.prefix}.events.*"

    def heartbeat(self, service: str, instance_id: str) -> str:
        """Where an instance publishes its heartbeats."""
        return (
            f"{self.prefix}.hb.{validate_token(service, 'service')}."
            f"{validate_token(instance_id, 'instance_id')}"
        )

    @property
    def heartbeat_all(self) -> str:
        """Wildcard a router subscribes to for every heartbeat."""
        return f"{self.prefix}.hb.*.*"

    # --- JetStream names -----------------------------------------------------------------
    @property
    def calls_stream(self) -> str:
        """Stream that persists RPC requests (exactly-once acceptance)."""
        return f"{self._name}_CALLS"

    @property
    def calls_all(self) -> str:
        """Subjects the calls stream captures."""
        return f"{self.prefix}.call.>"

    @property
    def calls_consumer(self) -> str:
        """Durable consumer all routers share to take calls from the calls stream."""
        return f"{self._name}_ROUTER"

    @property
    def registry_bucket(self) -> str:
        """KV bucket: one key per registered instance."""
        return f"{self._name}_REGISTRY"

    @property
    def contracts_bucket(self) -> str:
        """KV bucket: one key per registered instance, the method contracts it registered."""
        return f"{self._name}_CONTRACTS"

    @property
    def routes_bucket(self) -> str:
        """KV bucket: claimed resources (claimants, owner first) and sticky assignments."""
        return f"{self._name}_ROUTES"

    @property
    def leases_bucket(self) -> str:
        """KV bucket with a TTL: the router leadership lease (first ``create`` wins)."""
        return f"{self._name}_LEASES"

    @property
    def results_bucket(self) -> str:
        """KV bucket with a TTL: completed results by service, method, caller and call_id
        (at most once execution)."""
        return f"{self._name}_RESULTS"
