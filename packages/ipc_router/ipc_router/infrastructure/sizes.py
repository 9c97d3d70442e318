"""Byte sizes as people write them (``512MiB``, ``2GB``, ``1048576``) and as logs show them."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """A positive number of bytes from ``text``: a plain number, or a number with a unit.

    ``KiB``, ``MiB``, ``GiB``, ``TiB`` (and the bare ``K``, ``M``, ``G``, ``T``, as
    nats-server reads them) are powers of 1024; ``KB``, ``MB``, ``GB``, ``TB`` are powers of
    1000. Case does not matter.

    Raises:
        ValueError: not a size, or not positive.
    """
    found = _SIZE.fullmatch(text)
    unit = _UNITS.get(found[2].lower()) if found else None
    if found is None or unit is None:
        raise ValueError(f"not a size: {text!r} (a number of bytes, or e.g. 512MiB, 2GiB)")
    value = int(float(found[1]) * unit)
    if value <= 0:
        raise ValueError(f"must be positive, got {text!r}")
    return value


def format_size(size: int) -> str:
    """``size`` bytes in the largest power-of-1024 unit that keeps it at 1 or more."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.4g} {unit}"
        value /= 1024
    return f"{value:.4g} TiB"
