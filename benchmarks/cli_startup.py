"""How long ``ipc`` takes to start: ``ipc --help`` and ``ipc status`` against a running
router, as wall time of the whole process (median of N runs), and the slowest imports.

    uv run python benchmarks/cli_startup.py [--runs 10]

It runs the ``ipc`` entry point of this environment (``.venv/bin/ipc``, no ``uv run`` in
between) in two ways:

- **bytecode cached**: as an installed ``ipc`` starts (pip compiles the bytecode when it
  installs; Python writes it on the first start otherwise). The cache is a temporary
  folder (``PYTHONPYCACHEPREFIX``), filled by one run before the timed ones.
- **as this shell runs it**: the environment as it is. Where ``PYTHONDONTWRITEBYTECODE=1``
  is set (the development sandbox sets it) and ``uv sync`` compiled nothing (its default),
  every module of the virtual environment and of the workspace is compiled from source on
  every start; the standard library keeps the bytecode its installation compiled.

Targets: ``ipc --help`` <= 0.3 s, ``ipc status`` <= 0.5 s on the development machine. It
prints figures, it asserts nothing: the machine is shared and the numbers are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ipc_router.infrastructure.nats_server import NatsServerConfig, NatsServerProcess
from ipc_testing.router import RouterProcess


def ipc_command() -> list[str]:
    """The ``ipc`` script beside this interpreter, as an operator runs it."""
    script = Path(sys.executable).with_name("ipc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ipc_cli"]


def environments(workdir: Path) -> dict[str, dict[str, str]]:
    """The two ways of starting, by name: their process environments."""
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(workdir / "pyc")
    return {"bytecode cached": cached, "as this shell runs it": dict(os.environ)}


def wall(argv: list[str], runs: int, env: dict[str, str]) -> float:
    """Median seconds of ``runs`` runs of ``argv`` (each must exit 0), after one untimed
    run that fills the bytecode cache where there is one."""
    subprocess.run(argv, check=True, capture_output=True, env=env)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def top_imports(argv: list[str], env: dict[str, str], count: int = 10) -> list[str]:
    """The ``python -X importtime`` lines of the slowest imports ``argv`` (arguments of
    ``python``) makes, down to three levels deep."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    rows = []
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            if len(name) - len(name.lstrip()) <= 5:  # the top three levels
                rows.append((int(parts[1]), name.strip()))
    rows.sort(reverse=True)
    return [f"{micros / 1e6:7.3f} s  {name}" for micros, name in rows[:count]]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    ipc = ipc_command()
    print(f"{' '.join(ipc)}, median of {args.runs} runs each", end="")
    print(f" (this shell: PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE')}):")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        envs = environments(workdir)
        for mode, env in envs.items():
            print(f"ipc --help   {mode:<24} {wall([*ipc, '--help'], args.runs, env):.3f} s")
        server = NatsServerProcess(NatsServerConfig(store_dir=workdir / "nats", port=0))
        await server.start()
        router = RouterProcess(server.url, workdir / "router.log")
        try:
            await router.start()
            status = ["--nats-url", server.url, "status"]
            for mode, env in envs.items():
                print(f"ipc status   {mode:<24} {wall([*ipc, *status], args.runs, env):.3f} s")
            for mode, env in envs.items():
                print(f"\npython -X importtime -m ipc_cli status ({mode}), slowest:")
                print("\n".join(top_imports(["-m", "ipc_cli", *status], env)))
        finally:
            await router.stop()
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
