"""The ``ipc`` entry point, kept light: Ctrl-C while the heavier modules load, or at any
other moment, ends the command quietly (exit 130) instead of with a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    """Run ``ipc``."""
    try:
        from ipc_cli.main import main as run  # noqa: PLC0415  # imported under the guard

        run()
    except KeyboardInterrupt:
        sys.stderr.write("ipc: interrupted\n")
        sys.exit(130)
