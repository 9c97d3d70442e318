"""Exit codes of ``ipc``, documented in the package README and kept stable for scripts."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What ``ipc`` returns to the shell."""

    OK = 0
    FAILED = 1
    """The operation was refused or failed (unknown service, bad input, remote error)."""
    USAGE = 2
    """The command line was wrong (Click's own code for usage errors)."""
    UNREACHABLE = 3
    """NATS or the router could not be reached."""
