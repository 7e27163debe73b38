"""A capture directory: manifest, journal segments, Parquet parts, writer locks (compaction and
recovery: compaction.py).

Layout::

    CAPTURE/
      capture.json                      manifest: format, format version, capture id
      journal/<writer>.lock             held (flock) by a live writer for its whole life
      journal/<writer>-<segment>.seg    journal segments, deleted once compacted
      parts/part-<writer>-<segment>.parquet

Each writer only ever touches its own segments and parts, so several writers (several proxies)
can share a directory. A segment is compacted by writing its records, sorted by request start, to
a temporary Parquet file, fsyncing it, renaming it into place and only then deleting the segment:
a crash at any point leaves either the segment, or the part, or both (then the segment is simply
deleted on recovery, because the rename is atomic and the part is complete).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CaptureError
from .version import FORMAT_VERSION, LOADTAPE_VERSION

MANIFEST = "capture.json"
RECOVERY_LOG = "recovery.log"
JOURNAL_DIR = "journal"
PARTS_DIR = "parts"
FORMAT_NAME = "loadtape-capture"
DIR_MODE = 0o700
FILE_MODE = 0o600

_SEGMENT_RE = re.compile(r"^(?P<writer>[A-Za-z0-9_.]+)-(?P<segment>\d{6,})\.seg$")
_PART_RE = re.compile(r"^part-(?P<writer>[A-Za-z0-9_.]+)-(?P<segment>\d{6,})\.parquet$")


@dataclass(frozen=True)
class Manifest:
    capture_id: str
    format_version: int
    created_ns: int


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:12]


def segment_name(writer_id: str, segment: int) -> str:
    return f"{writer_id}-{segment:06d}.seg"


def part_name(writer_id: str, segment: int) -> str:
    return f"part-{writer_id}-{segment:06d}.parquet"


def mkdir_private(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def seal_private(path: Path) -> None:
    """A directory and everything in it made the owner's only (0700 directories, 0600 files):
    results, reports and histograms hold what a capture holds."""
    if not path.exists():
        return
    if path.is_file():
        os.chmod(path, FILE_MODE)
        return
    os.chmod(path, DIR_MODE)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), DIR_MODE)
        for f in files:
            os.chmod(os.path.join(root, f), FILE_MODE)


def open_private(path: Path, flags: int) -> int:
    """os.open with mode 0600 (and the mode forced even where umask would widen nothing)."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    return fd


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_version(version: Any, where: str) -> int:
    try:
        v = int(version)
    except (TypeError, ValueError):
        raise CaptureError(f"{where}: unreadable format version {version!r}") from None
    if v > FORMAT_VERSION:
        raise CaptureError(
            f"{where}: written in capture format v{v}; this loadtape ({LOADTAPE_VERSION}) "
            f"reads up to v{FORMAT_VERSION}: upgrade loadtape to read it"
        )
    if v < 1:
        raise CaptureError(f"{where}: invalid format version {v}")
    return v


def read_manifest(root: Path) -> Manifest | None:
    path = root / MANIFEST
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise CaptureError(f"{path}: not a loadtape capture manifest (not UTF-8)") from None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise ValueError
        version = check_version(data.get("format_version"), str(path))
        return Manifest(str(data["capture_id"]), version, int(data.get("created_ns", 0)))
    except CaptureError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError):
        raise CaptureError(f"{path}: not a loadtape capture manifest") from None


def ensure_capture(root: Path, capture_id: str | None = None) -> Manifest:
    """Create the capture directory and manifest if missing (race-free), and return the manifest."""
    mkdir_private(root)
    mkdir_private(root / JOURNAL_DIR)
    mkdir_private(root / PARTS_DIR)
    existing = read_manifest(root)
    if existing is not None:
        return existing
    manifest = Manifest(capture_id or new_id("c"), FORMAT_VERSION, time.time_ns())
    body = json.dumps(
        {
            "format": FORMAT_NAME,
            "format_version": manifest.format_version,
            "capture_id": manifest.capture_id,
            "created_ns": manifest.created_ns,
            "loadtape_version": LOADTAPE_VERSION,
        },
        indent=2,
    ).encode()
    tmp = root / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails if another writer created the manifest first: theirs wins.
        os.link(tmp, root / MANIFEST)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    fsync_dir(root)
    result = read_manifest(root)
    assert result is not None
    return result


class WriterLock:
    """An exclusive flock on journal/<writer>.lock, held for as long as the writer lives."""

    def __init__(self, journal_dir: Path, writer_id: str, *, blocking: bool = True) -> None:
        self.path = journal_dir / f"{writer_id}.lock"
        self.fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            raise

    def release(self, *, unlink: bool) -> None:
        if self.fd < 0:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1


def try_lock(journal_dir: Path, writer_id: str) -> WriterLock | None:
    try:
        return WriterLock(journal_dir, writer_id, blocking=False)
    except BlockingIOError:
        return None


@dataclass
class SegmentFile:
    path: Path
    writer_id: str
    segment: int


def list_segments(root: Path) -> list[SegmentFile]:
    jdir = root / JOURNAL_DIR
    out = []
    try:
        names = os.listdir(jdir)
    except FileNotFoundError:
        return []
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m:
            out.append(SegmentFile(jdir / name, m["writer"], int(m["segment"])))
    out.sort(key=lambda s: (s.writer_id, s.segment))
    return out


def list_parts(root: Path) -> list[Path]:
    try:
        names = os.listdir(root / PARTS_DIR)
    except FileNotFoundError:
        return []
    return sorted(root / PARTS_DIR / n for n in names if _PART_RE.match(n))
