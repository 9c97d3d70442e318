"""How long ``ipc`` takes to start: ``ipc --help`` and ``ipc status`` against a running
router, as wall time of the whole process (median of N runs), and the slowest imports.

    uv run python benchmarks/cli_startup.py [--runs 10]

Targets: ``ipc --help`` <= 0.3 s, ``ipc status`` <= 0.5 s on the development machine. It
prints figures, it asserts nothing: the machine is shared and the numbers are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess
from ipc_testing.router import RouterProcess

IPC = [sys.executable, "-m", "ipc_cli"]


def wall(argv: list[str], runs: int) -> float:
    """Median seconds of ``runs`` runs of ``argv`` (each must exit 0)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def top_imports(module: str, count: int = 8) -> list[str]:
    """The ``python -X importtime`` lines of the slowest top-level imports of ``module``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            if len(name) - len(name.lstrip()) <= 3:  # the module and its direct imports
                rows.append((int(parts[1]), name.strip()))
    rows.sort(reverse=True)
    return [f"{micros / 1e6:7.3f} s  {name}" for micros, name in rows[:count]]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    print(f"ipc --help          median of {args.runs}: {wall([*IPC, '--help'], args.runs):.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = NatsServerProcess(NatsServerConfig(store_dir=workdir / "nats", port=0))
        await server.start()
        router = RouterProcess(server.url, workdir / "router.log")
        try:
            await router.start()
            status = [*IPC, "--nats-url", server.url, "status"]
            print(f"ipc status          median of {args.runs}: {wall(status, args.runs):.3f} s")
        finally:
            await router.stop()
            await server.stop()
    for module in ("ipc_cli.main", "ipc_cli._ops"):
        print(f"\npython -X importtime -c 'import {module}', slowest:")
        print("\n".join(top_imports(module)))


if __name__ == "__main__":
    asyncio.run(main())
