"""A real ``ipc-router`` process: the SDK testing kit's ``RouterProcess``, one definition
shared with service teams' tests."""

from ipc_client_sdk.testing._router import RouterProcess, RouterProcessError

__all__ = ["RouterProcess", "RouterProcessError"]
