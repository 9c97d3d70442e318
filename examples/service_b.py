"""``service_b`` as a module for ``ipc run``: no ``main`` of its own to write.

    uv run ipc run service_b:service_b --app-dir examples --instance-id b1 --resources acc_XYZ

``ipc run`` connects (the global ``--nats-url``, default nats://127.0.0.1:4222), serves
the instance, prints its role and every role change, and on Ctrl-C or SIGTERM stops it the
planned way: hands its roles over, finishes the calls in flight, deregisters, exits 0.
"""

from __future__ import annotations

from orders import service_b

__all__ = ["service_b"]
