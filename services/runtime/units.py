"""Durations and sizes as people (and dfget) write them. Pure.

Named ``duration`` and ``size`` so that argparse, given one as a ``type``, says
``invalid duration value: '2x'`` in one line.
"""

from __future__ import annotations

import re
from typing import Final

_SECONDS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0, "d": 86400.0}
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h|d))+")
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_BYTES: Final = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                 "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")


def duration(text: str) -> float:
    """Seconds from ``90`` (seconds), or Go's form as dfget takes it: ``2h``, ``1h30m``,
    ``500ms`` (and ``d`` for days). Raises ``ValueError``."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        if not _DURATION.fullmatch(value):
            raise ValueError(f"not a duration (90, 30s, 2h, 1h30m): {text!r}") from None
        seconds = sum(float(n) * _SECONDS[unit] for n, unit in _PART.findall(value))
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {text!r}")
    return seconds


def size(text: str) -> int:
    """Bytes from ``4194304``, or with a unit as dfget takes it: ``4mib`` (2^20), ``4mb``
    (10^6), ``16KiB``; case does not matter. Raises ``ValueError``."""
    value = text.strip().lower()
    if value.isdigit():
        return int(value)
    m = _SIZE.fullmatch(value)
    if m is None or m.group(2) not in _BYTES:
        raise ValueError(f"not a size (4194304, 4mib, 16kb): {text!r}")
    return int(float(m.group(1)) * _BYTES[m.group(2)])
