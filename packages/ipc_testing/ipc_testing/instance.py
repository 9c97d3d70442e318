"""A service instance in a process of its own, for failover tests and the benchmark.

``python -m ipc_testing.instance NATS_URL INSTANCE_ID RUNS_FILE [--resource R ...]`` serves
``service_b.do_work`` (the workload's models) as ``INSTANCE_ID``. Every
handler run appends ``<call_id> <instance_id>`` to ``RUNS_FILE`` with one unbuffered
``write`` as it starts, so the record survives a kill -9 of the process: the
parent counts runs across processes from it. Role changes are printed as
``role <role> epoch <n>``; ``serving`` once registered; ``fenced`` when its lease runs out
(no router answered its heartbeats) and ``lease renewed`` when one answers again. SIGTERM
stops it the planned way (``instance.stop()``, which hands its roles over) and it prints
``stopped``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from ipc_client_sdk import CallContext, IPCClient, RoleChange, Service, ServiceInstance
from ipc_router.infrastructure.process import ChildProcess
from ipc_testing.workload import WorkRequest, WorkResult


class InstanceProcess(ChildProcess):
    """``python -m ipc_testing.instance`` as a child process.

    Args:
        nats_url: the NATS URL.
        instance_id: its instance id.
        workdir: where its log and runs file go.
        resources: resources it claims.
        env: variables set for it beyond this process's (``IPC_NATS_NKEY``, say).
    """

    def __init__(
        self,
        nats_url: str,
        instance_id: str,
        workdir: Path,
        resources: tuple[str, ...] = (),
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(workdir / f"{instance_id}.log")
        self.nats_url = nats_url
        self.instance_id = instance_id
        self.runs_path = workdir / f"{instance_id}.runs"
        self.resources = resources
        self.env = dict(env or {})

    async def start(self, *, timeout: float = 20.0) -> None:
        """Start it and wait until it serves.

        Raises:
            RuntimeError: it did not come up within ``timeout``.
        """
        offset = self.log_size()
        argv = [sys.executable, "-m", "ipc_testing.instance", self.nats_url, self.instance_id]
        argv.append(str(self.runs_path))
        for resource in self.resources:
            argv += ["--resource", resource]
        self.spawn(argv, env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"})
        if not await self.wait_for_output("serving", since=offset, timeout=timeout):
            raise RuntimeError(f"instance {self.instance_id} did not start: {self.log_tail(5)}")

    def runs(self) -> list[str]:
        """The call_ids its handler ran, in order."""
        return read_runs(self.runs_path)


def read_runs(path: Path) -> list[str]:
    """The call_ids recorded in one runs file."""
    if not path.exists():
        return []
    return [line.split(" ", 1)[0] for line in path.read_text().splitlines() if line]


async def _serve(url: str, instance_id: str, runs: Path, resources: list[str]) -> None:
    svc = Service("service_b")
    fd = os.open(runs, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @svc.method("do_work")
    async def do_work(req: WorkRequest, ctx: CallContext) -> WorkResult:
        # Recorded when the run starts: a run cut short by a kill counts as a run.
        os.write(fd, f"{ctx.call_id} {instance_id}\n".encode())
        if req.delay_s:
            await asyncio.sleep(req.delay_s)
        return WorkResult.answer(req, ctx)

    def on_role_change(change: RoleChange) -> None:
        _say(f"role {change.role} epoch {change.epoch}")

    async with IPCClient(url, name=instance_id) as client:
        instance = await client.serve(
            svc,
            instance_id=instance_id,
            resources=resources,
            on_role_change=on_role_change,
        )
        _say(f"serving as {instance.role} epoch {instance.epoch}")
        fencing = asyncio.create_task(_report_fencing(instance))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()  # SIGTERM: a planned stop (hand over, then leave)
        fencing.cancel()
        await instance.stop()
        _say("stopped")


async def _report_fencing(instance: ServiceInstance) -> None:
    """Say when the instance's lease runs out and when it is renewed (the SDK has no event
    for it), so that a test can wait for the fence instead of sleeping past the lease."""
    fenced = instance.fenced
    while True:
        await asyncio.sleep(0.05)
        if instance.fenced != fenced:
            fenced = not fenced
            _say("fenced" if fenced else "lease renewed")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    """Run one instance until killed."""
    parser = argparse.ArgumentParser(prog="python -m ipc_testing.instance")
    parser.add_argument("nats_url")
    parser.add_argument("instance_id")
    parser.add_argument("runs", type=Path)
    parser.add_argument("--resource", action="append", default=[])
    args = parser.parse_args()
    asyncio.run(_serve(args.nats_url, args.instance_id, args.runs, args.resource))


if __name__ == "__main__":
    main()
