"""The capture journal: length-prefixed, CRC-checked msgpack frames in segment files.

Frame layout (little endian)::

    uint32 payload length | uint32 CRC32(payload) | payload (msgpack)

The first frame of a segment is its header (a msgpack map naming the writer, the capture and the
column list); every later frame is one record as a positional array in that column order.

Scanning never raises on damage. A truncated trailing frame (the normal result of a crash mid-write)
and a corrupt frame in the middle are both reported as `Damage`; after a corrupt frame the scanner
searches forward for the next frame whose CRC checks out, so good frames after a bad one are kept,
and the bytes it skipped are reported.
"""

from __future__ import annotations

import contextlib
import gc
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

MAGIC = "loadtape-journal"
_HEAD = struct.Struct("<II")
HEAD_SIZE = _HEAD.size
MAX_FRAME = 256 * 1024 * 1024  # a length above this is damage, not a frame


class JournalError(Exception):
    """A segment cannot be used at all (no valid header)."""


def encode_frame(payload_obj: Any) -> bytes:
    payload: bytes = msgpack.packb(payload_obj, use_bin_type=True)
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def encode_frames(objs: list[Any]) -> bytes:
    packb = msgpack.Packer(use_bin_type=True).pack
    parts = []
    for obj in objs:
        payload = packb(obj)
        parts.append(_HEAD.pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


@dataclass
class Damage:
    """Something wrong found while scanning a segment."""

    offset: int
    kind: str  # "truncated" (at the end) or "corrupt" (with good data possibly after it)
    skipped_bytes: int
    detail: str

    def describe(self, path: str) -> str:
        return (
            f"{path}: {self.kind} frame at byte {self.offset} ({self.detail}); "
            f"skipped {self.skipped_bytes} bytes"
        )


@dataclass
class Scan:
    header: dict[str, Any] | None
    frames: list[Any] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    good_end: int = 0  # offset just past the last good frame


def _try_frame(buf: memoryview, off: int) -> tuple[Any, int] | str:
    """Decode the frame at off. Returns (obj, next_offset) or a reason string."""
    n = len(buf)
    if off + HEAD_SIZE > n:
        return "truncated header"
    length, crc = _HEAD.unpack_from(buf, off)
    if length > MAX_FRAME:
        return f"implausible length {length}"
    end = off + HEAD_SIZE + length
    if end > n:
        return f"truncated payload ({n - off - HEAD_SIZE} of {length} bytes)"
    payload = buf[off + HEAD_SIZE : end]
    if zlib.crc32(payload) != crc:
        return "CRC mismatch"
    try:
        # Arrays as tuples: tuples of atoms are not tracked by the cyclic GC, which otherwise
        # rescans every decoded frame over and over during a bulk scan.
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=False)
    except Exception as exc:  # msgpack raises several types on garbage
        return f"undecodable payload ({type(exc).__name__})"
    return obj, end


def cut_in_header(data: bytes) -> bool:
    """Whether a segment ends inside its header frame (the writer died while writing it)."""
    res = _try_frame(memoryview(data), 0)
    return isinstance(res, str) and res.startswith("truncated")


def scan_bytes(data: bytes) -> Scan:
    """Decode every good frame of a segment, reporting damage instead of raising on it."""
    with gc_paused():
        return _scan(data)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Defer cyclic GC during bulk decoding (the decoded rows hold no cycles)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _scan(data: bytes) -> Scan:
    buf = memoryview(data)
    n = len(buf)
    scan = Scan(header=None)
    off = 0
    first = True
    while off < n:
        res = _try_frame(buf, off)
        if isinstance(res, tuple):
            obj, nxt = res
            if first:
                if not (isinstance(obj, dict) and obj.get("magic") == MAGIC):
                    raise JournalError("not a loadtape journal segment (bad header frame)")
                scan.header = obj
                first = False
            else:
                scan.frames.append(obj)
            off = nxt
            scan.good_end = off
            continue
        if first:
            raise JournalError(f"not a loadtape journal segment ({res} in header frame)")
        reason = res
        assert scan.header is not None
        resume = _resync(data, off + 1, len(scan.header.get("columns", ())))
        if resume is None:
            kind = "truncated" if reason.startswith("truncated") else "corrupt"
            scan.damage.append(Damage(off, kind, n - off, reason))
            break
        scan.damage.append(Damage(off, "corrupt", resume - off, reason))
        off = resume
    return scan


def _resync(data: bytes, start: int, ncols: int) -> int | None:
    """Offset of the next good record frame at or after start, or None.

    Record payloads are msgpack arrays of ncols values, so a frame's payload starts with a known
    marker; searching for it with bytes.find keeps resync fast on large segments."""
    marker = _array_marker(ncols)
    buf = memoryview(data)
    pos = start + HEAD_SIZE
    while True:
        pos = data.find(marker, pos)
        if pos < 0:
            return None
        off = pos - HEAD_SIZE
        if off >= start and isinstance(_try_frame(buf, off), tuple):
            return off
        pos += 1


def _array_marker(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def scan_file(path: str | os.PathLike[str]) -> Scan:
    with open(path, "rb") as fh:
        return scan_bytes(fh.read())


def segment_header(
    *,
    format_version: int,
    writer_id: str,
    capture_id: str,
    segment: int,
    columns: tuple[str, ...],
    redaction: dict[str, Any],
) -> dict[str, Any]:
    return {
        "magic": MAGIC,
        "format_version": format_version,
        "writer_id": writer_id,
        "capture_id": capture_id,
        "segment": segment,
        "columns": list(columns),
        "redaction": redaction,
    }
