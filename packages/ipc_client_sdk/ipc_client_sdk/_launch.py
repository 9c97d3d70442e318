"""Running a ``Service`` as one instance until SIGINT or SIGTERM.

What every service's ``main`` used to repeat (connect, serve, wait for a signal, hand over,
stop), written once: ``ipc run module:service`` and the testing kit's instance processes
use it.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Callable, Sequence

from ipc_client_sdk._client import IPCClient
from ipc_client_sdk._errors import InvalidArgumentError
from ipc_client_sdk._service import Service
from ipc_client_sdk._serving import RoleChange

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a running instance the planned way."""


def load_service(target: str) -> Service:
    """The ``Service`` that ``"package.module:attribute"`` names.

    Raises:
        InvalidArgumentError: the target is malformed, its module does not import, or the
            attribute is missing or not a ``Service``.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise InvalidArgumentError(f"target {target!r} is not 'module:service'")
    try:
        found: object = importlib.import_module(module_name)
    except ImportError as e:
        raise InvalidArgumentError(f"cannot import {module_name!r}: {e}") from e
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise InvalidArgumentError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(found, Service):
        kind = type(found).__name__
        raise InvalidArgumentError(f"{target!r} is a {kind}, not an ipc_client_sdk.Service")
    return found


async def serve_until_signalled(
    client: IPCClient,
    service: Service,
    *,
    instance_id: str,
    resources: Sequence[str] = (),
    say: Callable[[str], None],
) -> None:
    """Serve ``service`` on an open ``client`` until SIGINT or SIGTERM, then ``stop()``.

    The stop hands the instance's roles over and lets the calls in flight finish. Progress
    goes to ``say``: ``serving as <role>`` once registered, each role change, ``stopped``.

    Raises:
        IPCError: the registration failed (no router, the instance id is taken, ...).
    """
    name = f"{service.name}/{instance_id}"

    def on_role_change(change: RoleChange) -> None:
        say(f"{name} is {change.role} now (epoch {change.epoch}); owns {list(change.claimed)}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        instance = await client.serve(
            service, instance_id=instance_id, resources=resources, on_role_change=on_role_change
        )
        say(
            f"{name} serving as {instance.role}; owns {list(instance.claimed)}; "
            f"standby for {instance.standby_for}"
        )
        await stop.wait()
        say(f"{name} stopping: handing over, finishing the calls in flight")
        await instance.stop()
        say(f"{name} stopped")
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
