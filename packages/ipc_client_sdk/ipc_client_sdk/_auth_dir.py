"""An auth directory: the NATS configuration and NKey seeds of one secured deployment.

``ipc auth init DIR`` and ``ipc auth add-service DIR NAME`` write it; ``ipc-router
--auth-dir DIR`` runs with it; tests build one the same way. It holds:

- ``identities.json``: the manifest (prefix, listen address, and each identity's name,
  role, public key and allowed callees). Never a seed. The configuration is regenerated
  from it, so it is the file to keep.
- ``nats.conf``: a complete nats-server configuration (listen address, JetStream and its
  store, ``include "authorization.conf"``); ``nats-server -c DIR/nats.conf`` runs it.
- ``authorization.conf``: the NKey users and their permissions (``_access``), and
  nobody anonymous.
- ``router.nk``, ``operator.nk``, ``<service>.nk``: the seeds, mode 0600, never
  overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import nkeys

from ipc_client_sdk._access import Identity, Role, authorization_block
from ipc_client_sdk._credentials import public_key_of
from ipc_client_sdk._subjects import DEFAULT_PREFIX, Subjects, validate_token

MANIFEST = "identities.json"
CONFIG = "nats.conf"
AUTHORIZATION = "authorization.conf"
_FORMAT = 1
_RESERVED = frozenset({Role.ROUTER.value, Role.OPERATOR.value})


class AuthDirError(Exception):
    """The auth directory cannot be written or read as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class AuthManifest:
    """What an auth directory's configuration is generated from.

    Attributes:
        prefix: the deployment's subject prefix.
        host: the address nats-server listens on.
        port: its client port.
        identities: router, operator and the services, in the order they were added.
    """

    prefix: str = DEFAULT_PREFIX
    host: str = "127.0.0.1"
    port: int = 4222
    identities: tuple[Identity, ...] = field(default=())

    def identity(self, name: str) -> Identity | None:
        """The identity called ``name``, if any."""
        return next((i for i in self.identities if i.name == name), None)

    def to_json(self) -> str:
        """The manifest file's text."""
        data = {
            "format": _FORMAT,
            "prefix": self.prefix,
            "host": self.host,
            "port": self.port,
            "identities": [
                {
                    "name": i.name,
                    "role": i.role.value,
                    "public_key": i.public_key,
                    "calls": None if i.calls is None else list(i.calls),
                }
                for i in self.identities
            ],
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AuthManifest:
        """Read a manifest file's text.

        Raises:
            ValueError: it is not one.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not an ipc auth manifest (format {_FORMAT})")
        identities = tuple(
            Identity(
                name=str(i["name"]),
                role=Role(i["role"]),
                public_key=str(i["public_key"]),
                calls=None if i.get("calls") is None else tuple(i["calls"]),
            )
            for i in data["identities"]
        )
        return cls(str(data["prefix"]), str(data["host"]), int(data["port"]), identities)


@dataclass(frozen=True, slots=True)
class AuthDir:
    """Paths and operations of one auth directory."""

    path: Path

    @property
    def manifest_file(self) -> Path:
        """``identities.json``."""
        return self.path / MANIFEST

    @property
    def config_file(self) -> Path:
        """``nats.conf``."""
        return self.path / CONFIG

    @property
    def authorization_file(self) -> Path:
        """``authorization.conf``: the ``authorization`` block alone."""
        return self.path / AUTHORIZATION

    def seed_file(self, name: str) -> Path:
        """The seed file of identity ``name``."""
        return self.path / f"{name}.nk"

    def load(self) -> AuthManifest:
        """The manifest.

        Raises:
            AuthDirError: missing or unreadable.
        """
        try:
            text = self.manifest_file.read_text()
        except OSError as e:
            raise AuthDirError(
                f"{self.path} is no ipc auth directory ({MANIFEST}: {e.strerror}); "
                "create one with 'ipc auth init'"
            ) from e
        try:
            return AuthManifest.from_json(text)
        except (ValueError, KeyError, TypeError) as e:
            raise AuthDirError(f"{self.manifest_file} is unreadable: {e}") from e

    def init(self, *, prefix: str, host: str, port: int) -> AuthManifest:
        """Create the directory's router and operator identities and its configuration.

        Raises:
            AuthDirError: it already holds a manifest or a seed, or cannot be written.
        """
        Subjects(prefix)  # validates the prefix
        if self.manifest_file.exists():
            raise AuthDirError(
                f"{self.path} already holds an ipc auth configuration ({MANIFEST}); add "
                "services with 'ipc auth add-service'"
            )
        for name in _RESERVED:
            if self.seed_file(name).exists():
                raise AuthDirError(f"{self.seed_file(name)} exists; it is never overwritten")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AuthDirError(f"cannot create {self.path}: {e.strerror}") from e
        identities = tuple(
            Identity(name, Role(name), self._new_seed(name))
            for name in (Role.ROUTER.value, Role.OPERATOR.value)
        )
        manifest = AuthManifest(prefix, host, port, identities)
        self.write(manifest)
        return manifest

    def add_service(self, name: str, calls: Sequence[str] | None = None) -> tuple[Identity, bool]:
        """Add service ``name`` (a new seed), or change the services an existing one may
        call (its seed is kept); rewrite the configuration.

        Returns:
            the identity, and whether it is new.

        Raises:
            AuthDirError: a bad name, no manifest, a seed file without a manifest entry, or
                a write failed.
        """
        try:
            validate_token(name, "service")
            callees = None if not calls else tuple(validate_token(c, "service") for c in calls)
        except ValueError as e:
            raise AuthDirError(str(e)) from e
        if name in _RESERVED:
            raise AuthDirError(f"{name!r} is the name of a built-in identity, not a service")
        manifest = self.load()
        found = manifest.identity(name)
        if found is not None:
            updated = replace(found, calls=callees)
            identities = tuple(updated if i is found else i for i in manifest.identities)
            self.write(replace(manifest, identities=identities))
            return updated, False
        if self.seed_file(name).exists():
            raise AuthDirError(
                f"{self.seed_file(name)} exists but {MANIFEST} does not list it; it is never "
                "overwritten: move it away, or add it to the manifest by hand"
            )
        identity = Identity(name, Role.SERVICE, self._new_seed(name), callees)
        self.write(replace(manifest, identities=(*manifest.identities, identity)))
        return identity, True

    def write(self, manifest: AuthManifest) -> None:
        """Write the manifest and the configuration generated from it.

        Raises:
            AuthDirError: a write failed.
        """
        subjects = Subjects(manifest.prefix)
        try:
            _replace_file(
                self.authorization_file, authorization_block(subjects, manifest.identities)
            )
            _replace_file(self.config_file, self._config(manifest))
            _replace_file(self.manifest_file, manifest.to_json())
        except OSError as e:
            raise AuthDirError(f"cannot write {self.path}: {e.strerror}") from e

    def _config(self, manifest: AuthManifest) -> str:
        store = (self.path / "jetstream").resolve()
        return (
            f"# nats-server configuration of the AegisIPC deployment with prefix "
            f"{manifest.prefix!r}.\n"
            f"# Written by 'ipc auth' from {MANIFEST}; 'ipc auth add-service' rewrites it.\n"
            f"host: {json.dumps(manifest.host)}\n"
            f"port: {manifest.port}\n"
            "max_payload: 2097152\n"
            f"jetstream {{ store_dir: {json.dumps(str(store))} }}\n"
            f'include "{AUTHORIZATION}"\n'
        )

    def _new_seed(self, name: str) -> str:
        """Write a fresh user seed to ``<name>.nk`` (0600, never over a file) and return
        its public key."""
        seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        path = self.seed_file(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise AuthDirError(f"{path} exists; it is never overwritten") from e
        except OSError as e:
            raise AuthDirError(f"cannot write {path}: {e.strerror}") from e
        with os.fdopen(fd, "wb") as f:
            f.write(seed + b"\n")
        return public_key_of(seed)


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the new)."""
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    staged.replace(path)
