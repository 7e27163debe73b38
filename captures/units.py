"""Parsing of durations, sizes and rates given on the command line or in scenario files."""

from __future__ import annotations

import re

_DUR = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>us|µs|ms|s|m|h)?\s*$")
_DUR_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(
    r"^\s*(?P<num>\d+(?:\.\d*)?)\s*(?P<unit>b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.I
)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1 << 20,
    "mb": 10**6,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 10**9,
    "gib": 1 << 30,
}


def parse_duration(text: str | float | int) -> float:
    """'250ms', '2s', '1.5m', '1h', or a bare number of seconds -> seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"negative duration {text}")
        return float(text)
    m = _DUR.match(str(text))
    if not m:
        raise ValueError(f"bad duration {text!r} (want e.g. 500ms, 2s, 1m)")
    return float(m["num"]) * _DUR_UNITS[m["unit"]]


def parse_size(text: str | int) -> int:
    """'64k', '1MiB', '1000' -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"negative size {text}")
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"bad size {text!r} (want e.g. 1000, 64k, 1MiB)")
    unit = m["unit"].lower() if m["unit"] else None
    return int(float(m["num"]) * _SIZE_UNITS[unit])


def format_duration_us(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.3g}s"
    if us >= 1e3:
        return f"{us / 1e3:.3g}ms"
    return f"{us:.3g}us"
