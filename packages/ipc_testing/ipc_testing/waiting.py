"""Waiting for a distributed system to settle: the SDK testing kit's ``until`` and
``eventually``, one definition shared with service teams' tests."""

from ipc_client_sdk.testing.waiting import eventually, until

__all__ = ["eventually", "until"]
