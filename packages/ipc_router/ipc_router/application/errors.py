"""The router's application errors.

RouterError               root
└── StoreUnavailableError  a JetStream store did not answer in time or refused
"""

from __future__ import annotations


class RouterError(Exception):
    """Root of the errors the router's use cases raise."""


class StoreUnavailableError(RouterError):
    """A store behind a port (JetStream KV or stream) did not answer in time or refused.

    Attributes:
        store: which store, e.g. the bucket name.
    """

    def __init__(self, store: str, reason: str) -> None:
        self.store = store
        self.reason = reason
        super().__init__(f"{store} unavailable: {reason}")
