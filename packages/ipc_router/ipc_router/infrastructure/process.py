"""``ChildProcess``: a child process the router or the test harness owns.

- It runs in its own session, so a Ctrl-C meant for the parent does not reach it before the
  parent has shut down in order.
- On Linux it dies with its parent (``PR_SET_PDEATHSIG``), so a parent killed with -9 leaves
  nothing behind.
- Its output goes to a log file (a pipe nobody reads would fill and stall it); the last lines
  of that log explain a failed start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded in the parent: loading a library between fork and exec is not safe.
_LIBC = _load_libc() if sys.platform == "linux" else None


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with this process (Linux), or None."""
    if _LIBC is None:
        return None
    libc, parent = _LIBC, os.getpid()

    def hook() -> None:  # pragma: no cover - runs in the child before exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class ChildProcess:
    """Start, stop, kill, pause and resume one child process.

    Args:
        log_path: where the child's stdout and stderr are appended.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while the process exists."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited."""
        return self._proc.poll() if self._proc is not None else None

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        """Start the process (returns at once; readiness is the caller's business)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=die_with_parent_hook(),
            )

    def log_tail(self, lines: int = 3, *, sep: str = " | ") -> str:
        """The last lines of the log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return sep.join(text.strip().splitlines()[-lines:])

    def log_size(self) -> int:
        """The log's current size, to read only what comes after it."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> bytes:
        """What the log gained after ``offset``."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""

    async def wait_for_output(self, text: str, *, since: int = 0, timeout: float) -> bool:
        """Wait until the log, after byte ``since``, contains ``text``.

        Returns:
            True when it appeared; False when the process exited or ``timeout`` passed first.
        """
        marker = text.encode()
        deadline = time.monotonic() + timeout
        while marker not in self.log_since(since):
            if not self.running or time.monotonic() >= deadline:
                return marker in self.log_since(since)  # it may have come with the exit
            await asyncio.sleep(0.05)
        return True

    async def stop(self, *, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait for the exit, SIGKILL after ``timeout``; safe to call twice.

        Returns:
            the exit status, or None when there was no process.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            if not await self.wait_exit(timeout):
                self.kill()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL and reap: the crash that fault tests inject."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): alive but silent, like a hung host."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused process (SIGCONT)."""
        self.signal(signal.SIGCONT)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` if the process is still there."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit; whether it did."""
        proc = self._proc
        deadline = time.monotonic() + timeout
        while proc is not None and proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie we already reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
