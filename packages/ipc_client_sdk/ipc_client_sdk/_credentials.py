"""``Credentials``: who a connection is and how it proves it, from arguments or variables.

At most one identity: an NKey seed file, a ``.creds`` file (a NATS user JWT and its seed),
a user and password, or a token. TLS settings (a CA bundle, a client certificate and key, or
a ready ``ssl.SSLContext``) combine with any of them.

They reach nats-py as connect options, never inside a URL: nats-py applies options to every
server it connects to, including the cluster nodes it learns about from the first one,
whereas a URL's ``user:password@`` applies to that URL's server only. For the same reason
``lift_url_credentials`` moves credentials written in a URL into options.

Nothing here puts a secret into a message or a ``repr()``; files are named, never quoted.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from ipc_client_sdk._errors import AuthenticationError, InvalidArgumentError

CREDENTIAL_ENV_VARS: Mapping[str, str] = {
    "nkey_seed_file": "IPC_NATS_NKEY",
    "creds_file": "IPC_NATS_CREDS",
    "user": "IPC_NATS_USER",
    "password": "IPC_NATS_PASSWORD",
    "token": "IPC_NATS_TOKEN",
    "tls_ca": "IPC_TLS_CA",
    "tls_cert": "IPC_TLS_CERT",
    "tls_key": "IPC_TLS_KEY",
    "inbox_prefix": "IPC_NATS_INBOX_PREFIX",
}
"""Each credential setting's environment variable."""

DEFAULT_INBOX_PREFIX = "_INBOX"
"""nats-py's reply subject prefix, kept for connections with no identity to derive one from."""

_SECRETS = frozenset({"password", "token"})
_PATHS = frozenset({"nkey_seed_file", "creds_file", "tls_ca", "tls_cert", "tls_key"})
_IDENTITIES = {
    "nkey_seed_file": "an NKey seed file",
    "creds_file": "a .creds file",
    "user": "a user and password",
    "token": "a token",
}


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """How a connection authenticates to NATS, and which TLS it speaks.

    ``Credentials()`` is "none": plain NATS, anonymous. ``Credentials.from_env()`` reads the
    ``IPC_NATS_*`` and ``IPC_TLS_*`` variables. Files are read when the connection opens
    (and nats-py reads seed files again on each reconnect, so a rotated file is picked up).

    Args:
        nkey_seed_file: a file holding a user NKey seed (``SU...``).
        creds_file: a NATS ``.creds`` file (user JWT and seed), for operator-mode servers.
        user: a user name; needs ``password``.
        password: the user's password.
        token: an authorization token.
        tls_ca: a PEM bundle of the CAs that sign the servers' certificates.
        tls_cert: a PEM client certificate (needs ``tls_key``), for servers that verify
            clients.
        tls_key: the client certificate's PEM private key.
        tls: a ready ``ssl.SSLContext`` instead of ``tls_ca``/``tls_cert``/``tls_key``.
        inbox_prefix: where replies to this connection go (``<inbox_prefix>.<random>...``).
            None: derived from the identity (see ``reply_prefix``), so that a NATS
            configured by ``ipc auth`` can let each identity read its own replies only.

    File settings take a ``str`` or a ``Path`` and are stored as a ``Path``.

    Raises:
        InvalidArgumentError: two identities at once, a user without a password (or the
            reverse), a certificate without its key, or ``tls`` with TLS files.
    """

    nkey_seed_file: Path | str | None = None
    creds_file: Path | str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: Path | str | None = None
    tls_cert: Path | str | None = None
    tls_key: Path | str | None = None
    tls: ssl.SSLContext | None = None
    inbox_prefix: str | None = None

    def __post_init__(self) -> None:
        for name in _PATHS:  # accept str paths; "" means unset, like an empty variable
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value) if value else None)
        for name in ("user", "password", "token", "inbox_prefix"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        given = [what for name, what in _IDENTITIES.items() if getattr(self, name) is not None]
        if self.password is not None and "user" not in self._set():
            given.append(_IDENTITIES["user"])
        if len(set(given)) > 1:
            raise InvalidArgumentError(
                f"give one NATS identity, not {' and '.join(dict.fromkeys(given))}"
            )
        if (self.user is None) != (self.password is None):
            raise InvalidArgumentError("a NATS user needs a password, and a password a user")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgumentError("a TLS client certificate needs its key, and a key its cert")
        if self.tls is not None and (self.tls_ca or self.tls_cert):
            raise InvalidArgumentError("give either an ssl.SSLContext or TLS files, not both")
        if self.inbox_prefix is not None and not _INBOX_PREFIX.fullmatch(self.inbox_prefix):
            raise InvalidArgumentError(
                f"inbox prefix {self.inbox_prefix!r} must be dot-separated tokens of letters, "
                "digits, '_' and '-'"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> Self:
        """Credentials from the ``IPC_NATS_*``/``IPC_TLS_*`` variables; each of ``given``
        that is not None (a flag, say) takes the place of its variable.

        Raises:
            InvalidArgumentError: the settings conflict (see the class).
        """
        env = os.environ if environ is None else environ
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown credential settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {
            name: env.get(var) or None for name, var in CREDENTIAL_ENV_VARS.items()
        }
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)

    def _set(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    @property
    def identity(self) -> str:
        """What proves who the connection is, for logs: ``"NKey seed file router.nk"``,
        ``"user alice"``, ``"token"``, ``"none"``. Never a secret."""
        if self.nkey_seed_file is not None:
            return f"NKey seed file {self.nkey_seed_file}"
        if self.creds_file is not None:
            return f"creds file {self.creds_file}"
        if self.user is not None:
            return f"user {self.user}"
        if self.token is not None:
            return "token"
        return "none"

    @property
    def empty(self) -> bool:
        """True when nothing is set: an anonymous, plain connection."""
        return not [name for name in self._set() if name != "inbox_prefix"]

    def __repr__(self) -> str:
        shown = (
            f"{name}={'***' if name in _SECRETS else repr(getattr(self, name))}"
            for name in self._set()
        )
        return f"Credentials({', '.join(shown)})"

    def nats_options(self) -> dict[str, Any]:
        """The keyword arguments of nats-py's ``connect()`` for these credentials.

        Reads the files once to fail early and clearly.

        Raises:
            AuthenticationError: a file is missing, unreadable or not what it should be
                (the message names the file, never its contents).
        """
        options: dict[str, Any] = {}
        derived = None
        if self.nkey_seed_file is not None:
            derived = _check_seed_file(Path(self.nkey_seed_file))
            options["nkeys_seed"] = str(self.nkey_seed_file)
        if self.creds_file is not None:
            derived = _check_creds_file(Path(self.creds_file))
            options["user_credentials"] = str(self.creds_file)
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password
        if self.token is not None:
            options["token"] = self.token
        context = self.tls or self._tls_context()
        if context is not None:
            options["tls"] = context
        options["inbox_prefix"] = self.inbox_prefix or reply_prefix(derived)
        return options

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.tls_ca is None and self.tls_cert is None:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca) if self.tls_ca is not None else None
            )
        except (OSError, ssl.SSLError) as e:
            raise _file_error("TLS CA bundle", self.tls_ca, e) from e
        if self.tls_cert is not None and self.tls_key is not None:
            # ssl does not say which of the two files is missing: look first.
            _read(Path(self.tls_cert), "TLS client certificate")
            _read(Path(self.tls_key), "TLS client key")
            try:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
            except (OSError, ssl.SSLError) as e:
                raise _file_error("TLS client certificate or key", self.tls_cert, e) from e
        return context


def _file_error(what: str, path: Path | str | None, error: BaseException) -> AuthenticationError:
    reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or "unusable"
    return AuthenticationError("", f"cannot use the {what} {path}: {reason}")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _file_error(what, path, e) from e


_INBOX_PREFIX = re.compile(r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$")


def reply_prefix(public_key: str | None) -> str:
    """The inbox prefix of an identity: ``_INBOX.<its public NKey>``, or nats-py's
    ``_INBOX`` for a connection without one (user and password, token, anonymous).

    ``ipc auth`` grants each NKey user ``_INBOX.<public key>.>`` and nothing else under
    ``_INBOX``, so nobody else can subscribe to its replies.
    """
    return f"{DEFAULT_INBOX_PREFIX}.{public_key}" if public_key else DEFAULT_INBOX_PREFIX


def public_key_of(seed: bytes) -> str:
    """The public key (``U...``) of a user NKey seed.

    Raises:
        ValueError: ``seed`` is not an NKey seed.
    """
    import nkeys  # noqa: PLC0415  # PyNaCl loads only for an NKey identity

    buffer = bytearray(seed.strip())
    try:
        key: bytes = nkeys.from_seed(buffer).public_key
    except nkeys.ErrInvalidSeed as e:
        raise ValueError("not an NKey seed") from e
    finally:
        buffer[:] = bytes(len(buffer))  # best effort: the seed does not linger here
    return key.decode()


def _public_key(seed: bytearray, path: Path, what: str) -> str:
    try:
        return public_key_of(bytes(seed))
    except ValueError:
        raise AuthenticationError("", f"the {what} {path} holds no valid user seed") from None
    finally:
        seed[:] = bytes(len(seed))


def _check_seed_file(path: Path) -> str:
    """The seed file's public key."""
    seed = bytearray(_read(path, "NKey seed file").strip())
    if not seed.startswith(b"SU"):
        seed[:] = bytes(len(seed))
        raise AuthenticationError(
            "", f"the NKey seed file {path} holds no user seed (one line starting SU)"
        )
    return _public_key(seed, path, "NKey seed file")


def _check_creds_file(path: Path) -> str:
    """The ``.creds`` file's public key (of the seed it holds)."""
    text = _read(path, ".creds file")
    if b"BEGIN NATS USER JWT" not in text or b"NKEY SEED" not in text:
        raise AuthenticationError("", f"the .creds file {path} holds no user JWT and seed")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(b"SU")]
    if not lines:
        raise AuthenticationError("", f"the .creds file {path} holds no user seed")
    return _public_key(bytearray(lines[0]), path, ".creds file")


def lift_url_credentials(
    urls: Sequence[str], credentials: Credentials
) -> tuple[list[str], Credentials]:
    """Move ``user:password@`` (or ``token@``) out of the URLs into ``credentials``.

    nats-py sends a URL's credentials only to that URL's server, not to the cluster nodes
    it discovers, so a client that names one node would never reconnect elsewhere.

    Returns:
        the URLs without credentials, and the credentials to connect with.

    Raises:
        InvalidArgumentError: the URLs carry different credentials, or credentials also
            come from arguments or variables.
    """
    plain: list[str] = []
    found: set[tuple[str, str | None]] = set()
    for url in urls:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if "@" not in parts.netloc:
            plain.append(url)
            continue
        found.add((parts.username or "", parts.password))
        plain.append(urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])))
    if not found:
        return list(urls), credentials
    if len(found) > 1:
        raise InvalidArgumentError("the NATS URLs carry different credentials")
    if any(getattr(credentials, name) is not None for name in _IDENTITIES):
        raise InvalidArgumentError(
            "NATS credentials are both in a URL and in arguments or IPC_NATS_* variables; "
            "give them once (preferably not in the URL)"
        )
    user, password = found.pop()
    if password is None:  # nats://TOKEN@host, as nats-py reads it
        return plain, replace(credentials, token=user)
    return plain, replace(credentials, user=user, password=password)
