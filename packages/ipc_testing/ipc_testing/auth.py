"""Identities and server configuration blocks for authenticated test servers.

Everything is made at test time: NKey users, a user JWT with its ``.creds`` file under an
operator and account of its own, and a TLS CA with server and client certificates. Each
``*_block`` function returns nats-server configuration text for
``NatsServerConfig(extra=...)``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nkeys
import trustme


@dataclass(frozen=True, slots=True)
class NKeyUser:
    """A user NKey: the seed file a client connects with, the public key a server trusts."""

    seed_file: Path
    public_key: str


def _new_seed(prefix: int) -> bytes:
    seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
    return seed


def _public_key(seed: bytes) -> str:
    key: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return key.decode()


def new_nkey_user(directory: Path, name: str) -> NKeyUser:
    """Write a fresh user seed to ``directory/name.nk`` (mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    seed = _new_seed(nkeys.PREFIX_BYTE_USER)
    path = directory / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return NKeyUser(seed_file=path, public_key=_public_key(seed))


def users_block(*nkey_users: NKeyUser, passwords: Mapping[str, str] | None = None) -> str:
    """An ``authorization`` block that admits these NKey users and these users with
    passwords (each with every permission), and nobody else."""
    entries = [f'{{ nkey: "{u.public_key}" }}' for u in nkey_users]
    entries += [f'{{ user: "{n}", password: "{p}" }}' for n, p in (passwords or {}).items()]
    return f"authorization {{ users: [ {', '.join(entries)} ] }}\n"


def token_block(token: str) -> str:
    """An ``authorization`` block that admits clients presenting ``token``."""
    return f'authorization {{ token: "{token}" }}\n'


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a test CA, a server certificate for 127.0.0.1, and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path) -> TlsFiles:
    """A fresh CA and the certificates it signs, written under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("ipc-test-client")
    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files


def tls_block(files: TlsFiles, *, verify_clients: bool = False) -> str:
    """A ``tls`` block: the server presents its certificate and, with ``verify_clients``,
    requires one signed by the CA from every client."""
    verify = ", verify: true" if verify_clients else ""
    return (
        f'tls {{ cert_file: "{files.server_cert}", key_file: "{files.server_key}", '
        f'ca_file: "{files.ca}"{verify} }}\n'
    )


@dataclass(frozen=True, slots=True)
class JwtUser:
    """A ``.creds`` file and the operator-mode configuration that trusts it."""

    creds_file: Path
    server_block: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer_seed: bytes, subject: str, name: str, nats: dict[str, object]) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {
        "jti": _b64(os.urandom(16)),
        "iat": int(time.time()),
        "iss": _public_key(issuer_seed),
        "name": name,
        "sub": subject,
        "nats": nats | {"version": 2},
    }
    body = _b64(json.dumps(claims).encode())
    signature = nkeys.from_seed(bytearray(issuer_seed)).sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


def new_jwt_user(directory: Path, name: str) -> JwtUser:
    """An operator, an account and a user JWT, all fresh; ``server_block`` makes a server
    trust them (operator mode, memory resolver, no JetStream limits: core NATS only)."""
    directory.mkdir(parents=True, exist_ok=True)
    operator = _new_seed(nkeys.PREFIX_BYTE_OPERATOR)
    account = _new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    user = _new_seed(nkeys.PREFIX_BYTE_USER)
    op_pub, acc_pub = _public_key(operator), _public_key(account)
    unlimited: dict[str, object] = {"subs": -1, "data": -1, "payload": -1, "conn": -1}
    operator_jwt = _jwt(operator, op_pub, "ipc-test-operator", {"type": "operator"})
    account_jwt = _jwt(
        operator,
        acc_pub,
        "ipc-test-account",
        {"type": "account", "limits": unlimited | {"imports": -1, "exports": -1}},
    )
    user_jwt = _jwt(account, _public_key(user), name, {"type": "user"} | unlimited)
    creds = directory / f"{name}.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    block = (
        f"operator: {operator_jwt}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{ {acc_pub}: {account_jwt} }}\n"
    )
    return JwtUser(creds_file=creds, server_block=block)
