"""Serve ``service_b`` as one instance until Ctrl-C.

uv run python examples/service_b.py --instance-id b1 --resources acc_XYZ
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from ipc_client_sdk import IPCClient, IPCError
from orders import service_b


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    p.add_argument("--instance-id", default="b1")
    p.add_argument("--resources", nargs="*", default=["acc_XYZ"])
    args = p.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with IPCClient(args.nats_url, name=f"service_b-{args.instance_id}") as client:
        instance = await client.serve(
            service_b,
            instance_id=args.instance_id,
            resources=args.resources,
            on_role_change=lambda change: print(
                f"service_b/{args.instance_id} is {change.role} now (epoch {change.epoch}); "
                f"owns {list(change.claimed)}",
                flush=True,
            ),
        )
        print(
            f"service_b/{instance.instance_id} serving as {instance.role}; "
            f"owns {list(instance.claimed)}; standby for {instance.standby_for}. Ctrl-C stops.",
            flush=True,
        )
        await stop.wait()
        await instance.stop()  # hand over to a standby, finish in-flight calls, deregister
    print("stopped")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(main())
        except IPCError as e:
            raise SystemExit(f"service_b: {e}") from None
