"""Exit codes of ``ipc``, documented in the package README and kept stable for scripts."""

from __future__ import annotations

import enum
from typing import NoReturn

import typer


class ExitCode(enum.IntEnum):
    """What ``ipc`` returns to the shell."""

    OK = 0
    FAILED = 1
    """The operation was refused or failed (unknown service, bad input, remote error)."""
    USAGE = 2
    """The command line was wrong (Click's own code for usage errors)."""
    UNREACHABLE = 3
    """NATS or the router could not be reached."""


def fail(message: str, code: ExitCode) -> NoReturn:
    """Say ``message`` on stderr as ``ipc: error: ...`` and exit with ``code``."""
    typer.echo(f"ipc: error: {message}", err=True)
    raise typer.Exit(int(code))
