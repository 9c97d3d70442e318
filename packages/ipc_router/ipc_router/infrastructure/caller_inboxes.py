"""``CallerInboxes``: whose inbox a durable call's reply address is, under ``--auth-dir``.

Under ``ipc auth`` every identity may read its own inbox only, ``_INBOX.<its public
NKey>.>``, so a reply address outside the caller's own prefix is never one the caller can
read: answering there would publish a service's answer into another identity's inbox
namespace. The router knows each caller's key from the auth directory's manifest (the
caller is the last token of the call's subject, which NATS binds to the identity) and
refuses such a call. A caller the manifest does not name (added after the router read it)
has the manifest read again, at most every few seconds; one it still does not name is not
checked (a hand-configured NATS may admit identities the directory does not list).
"""

from __future__ import annotations

import logging
import time

from ipc_client_sdk.protocol import AuthDir, AuthDirError, RateLimitedLog, reply_prefix

_log = logging.getLogger("ipc_router.calls")

_REREAD_EVERY = 5.0
"""Seconds between two reads of the manifest for callers it did not name."""


class CallerInboxes:
    """Each identity's inbox prefix, from an auth directory.

    Args:
        auth_dir: the directory ``ipc auth`` wrote.
    """

    def __init__(self, auth_dir: AuthDir) -> None:
        self._auth_dir = auth_dir
        self._prefixes: dict[str, str] = {}
        self._read_at = -_REREAD_EVERY
        self._problems = RateLimitedLog(_log)
        self._read()

    def owns(self, caller: str, reply_to: str) -> bool:
        """Whether ``reply_to`` lies in ``caller``'s own inbox (or cannot be checked)."""
        prefix = self._prefixes.get(caller)
        if prefix is None and time.monotonic() - self._read_at >= _REREAD_EVERY:
            self._read()
            prefix = self._prefixes.get(caller)
        return prefix is None or reply_to.startswith(prefix)

    def _read(self) -> None:
        self._read_at = time.monotonic()
        try:
            manifest = self._auth_dir.load()
        except AuthDirError as e:
            self._problems.warning("manifest", "reply addresses not checked: %s", e)
            return
        self._prefixes = {i.name: reply_prefix(i.public_key) + "." for i in manifest.identities}
