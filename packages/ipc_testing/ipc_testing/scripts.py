"""Running the repository's example scripts as a user would: a process of their own."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
"""The repository's ``examples/`` folder."""


async def run_example(name: str, *args: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``examples/<name>`` with this interpreter; return its exit code and its output
    (stdout and stderr together)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode()
