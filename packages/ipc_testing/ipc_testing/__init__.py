"""Private test harness for AegisIPC: real nats-server and router processes.

Not published. Loaded by pytest through the ``pytest11`` entry point, so every package's
tests get the fixtures without copying a conftest.
"""

from ipc_router.infrastructure.nats_server import (
    NatsServerConfig,
    NatsServerError,
    NatsServerProcess,
    free_port,
)
from ipc_router.infrastructure.process import ChildProcess, pid_alive
from ipc_testing.cluster import NatsCluster
from ipc_testing.router import RouterProcess, RouterProcessError
from ipc_testing.waiting import eventually, until

__all__ = [
    "ChildProcess",
    "NatsCluster",
    "NatsServerConfig",
    "NatsServerError",
    "NatsServerProcess",
    "RouterProcess",
    "RouterProcessError",
    "eventually",
    "free_port",
    "pid_alive",
    "until",
]
