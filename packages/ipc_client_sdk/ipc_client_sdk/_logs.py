"""Quiet logs for problems a remote peer causes: a flood costs kilobytes, not megabytes.

Anyone who can publish on NATS can send a router or an instance malformed calls, huge reply
addresses or junk events, as fast as the connection allows. Two tools keep what that writes
to the log bounded:

- ``RateLimitedLog`` logs the first occurrence of a problem kind at once, then at most one
  summary line per interval for that kind, carrying the latest occurrence and how many were
  not logged one by one::

      refusing an unreadable call on ipc.call.x.y: invalid CallRequest: ...
      2,000 more like it in the last 10 s, the latest: refusing an unreadable call on ...

- ``clip`` bounds a peer-supplied field (a subject, a reply address, an id, an error text
  that echoes the input) and escapes control characters, so that no field can make a line
  long or forge another line.

The kinds are names chosen by the code, never by a peer; their number is bounded anyway.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

CLIP_LIMIT = 200
"""Characters a clipped field keeps."""

DEFAULT_INTERVAL = 10.0
"""Seconds between summary lines of one problem kind."""

DEFAULT_MAX_KINDS = 64
"""Problem kinds one ``RateLimitedLog`` tracks; beyond these they share one."""

OTHER_KIND = "(other problems)"
"""The kind that problems share once ``max_kinds`` are tracked."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clip(value: object, limit: int = CLIP_LIMIT) -> str:
    """``value`` as text of at most about ``limit`` characters, safe for one log line.

    Control characters (a newline could forge a log line) are escaped; a longer text keeps
    its first ``limit`` characters, an elision mark and its original length:
    ``ipc.reply.aaaa... (61,440 characters)``. Any other value is shown as ``str()`` shows
    it (an exception as its message).
    """
    text = value if isinstance(value, str) else str(value)
    shown = _CONTROL.sub(_escape, text[:limit])
    if len(text) <= limit and len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... ({len(text):,} characters)"


@dataclass(slots=True)
class _Window:
    """One kind's current interval: when it opened (its last line), what it held back (how
    many, the highest level, the latest message) and whether a timer will summarize it."""

    opened: float
    suppressed: int = 0
    level: int = logging.NOTSET
    latest: tuple[str, tuple[Any, ...]] = ("", ())
    flushing: bool = False


class RateLimitedLog:
    """A logger's rate limit per problem kind.

    The first occurrence of a kind is logged at once (with its traceback, if asked for).
    Later occurrences within ``interval`` seconds are counted, not logged; when the interval
    ends, one line gives their number and the latest of them, and a new interval opens.
    So a steady flood costs one line per kind per interval. While an event loop runs, the
    summary is written when the interval ends; otherwise with the kind's next occurrence,
    or by ``flush()``.

    Args:
        logger: where the lines go.
        interval: seconds between two lines of one kind.
        max_kinds: kinds tracked at once; further kinds are counted as ``OTHER_KIND``.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_kinds: int = DEFAULT_MAX_KINDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_kinds = max_kinds
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def warning(
        self, kind: str, msg: str, *args: Any, exc_info: bool | BaseException = False
    ) -> None:
        """Log a WARNING of ``kind`` within the rate limit."""
        self.log(logging.WARNING, kind, msg, *args, exc_info=exc_info)

    def error(
        self, kind: str, msg: str, *args: Any, exc_info: bool | BaseException = False
    ) -> None:
        """Log an ERROR of ``kind`` within the rate limit."""
        self.log(logging.ERROR, kind, msg, *args, exc_info=exc_info)

    def exception(self, kind: str, msg: str, *args: Any) -> None:
        """Log an ERROR of ``kind`` with the current exception's traceback (on the lines
        that are written) within the rate limit."""
        self.log(logging.ERROR, kind, msg, *args, exc_info=True)

    def log(
        self,
        level: int,
        kind: str,
        msg: str,
        *args: Any,
        exc_info: bool | BaseException = False,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Log ``msg % args`` at ``level`` now, or count it in ``kind``'s next summary.

        The arguments are formatted only when a line is written; clip peer-supplied ones.
        ``extra`` are the line's structured fields (``service``, ``instance``, ``call_id``).
        """
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        kind = self._tracked(kind, now)
        window = self._windows.get(kind)
        if window is not None and now - window.opened >= self.interval:
            if window.suppressed:
                self._summarize(window, now)  # no loop ran the timer: summarize late
            else:
                del self._windows[kind]  # quiet for a whole interval: log it at once
                window = None
        if window is None:
            self._windows[kind] = _Window(opened=now)
            self.logger.log(level, msg, *args, exc_info=exc_info, extra=extra)
            return
        window.suppressed += 1
        window.level = max(window.level, level)
        window.latest = (msg, args)
        if not window.flushing:
            window.flushing = self._schedule(kind, window.opened + self.interval - now)

    @property
    def suppressed(self) -> int:
        """Occurrences counted and not reported yet, over every kind."""
        return sum(w.suppressed for w in self._windows.values())

    def flush(self) -> None:
        """Write the summary of every kind whose interval has ended."""
        now = self._clock()
        for window in self._windows.values():
            if now - window.opened >= self.interval:
                self._summarize(window, now)

    def _flush_kind(self, kind: str) -> None:
        """The timer of ``kind``'s interval: its summary, if the interval has ended."""
        window = self._windows.get(kind)
        if window is None:
            return
        window.flushing = False
        now = self._clock()
        if now - window.opened >= self.interval:
            self._summarize(window, now)
        elif window.suppressed:
            window.flushing = self._schedule(kind, window.opened + self.interval - now)

    def _tracked(self, kind: str, now: float) -> str:
        """``kind``, or ``OTHER_KIND`` when ``max_kinds`` others are tracked."""
        if kind in self._windows or len(self._windows) < self.max_kinds:
            return kind
        for known, window in list(self._windows.items()):
            if window.suppressed == 0 and now - window.opened >= self.interval:
                del self._windows[known]  # quiet for a whole interval: nothing to keep
        return kind if len(self._windows) < self.max_kinds else OTHER_KIND

    def _summarize(self, window: _Window, now: float) -> None:
        """One line for what ``window`` held back, and a new interval from ``now``."""
        if window.suppressed == 0:
            return
        msg, args = window.latest
        try:
            latest = msg % args if args else msg
        except (TypeError, ValueError):  # a format mistake must not lose the count
            latest = f"{msg} {args!r}"
        self.logger.log(
            window.level,
            "%s more like it in the last %s s, the latest: %s",
            f"{window.suppressed:,}",
            f"{round(now - window.opened, 1):g}",
            latest,
        )
        window.opened, window.suppressed, window.level = now, 0, logging.NOTSET

    def _schedule(self, kind: str, delay: float) -> bool:
        """Summarize ``kind`` after ``delay`` seconds if an event loop runs; whether it will."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        loop.call_later(max(delay, 0.0), self._flush_kind, kind)
        return True
