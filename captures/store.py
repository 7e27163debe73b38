"""A capture directory: manifest, journal segments, Parquet parts, writer locks, compaction.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import journal
from .errors import CaptureError
from .schema import (
    FORMAT_VERSION,
    LOADTAPE_VERSION,
    META_CAPTURE_ID,
    META_FORMAT_VERSION,
    META_LOADTAPE_VERSION,
    META_REDACTION,
    META_WRITER_ID,
    SEQ_IDX,
    START_IDX,
    RecordError,
    remap_row,
    rows_to_table,
)

MANIFEST = "capture.json"
RECOVERY_LOG = "recovery.log"
JOURNAL_DIR = "journal"
PARTS_DIR = "parts"
FORMAT_NAME = "loadtape-capture"
DIR_MODE = 0o700
FILE_MODE = 0o600
ROW_GROUP_ROWS = 4096
ROW_GROUP_BYTES = 8 << 20  # readers decode a row group's column chunk at once: keep it small

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
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise ValueError
        version = check_version(data.get("format_version"), str(path))
        return Manifest(str(data["capture_id"]), version, int(data.get("created_ns", 0)))
    except CaptureError:
        raise
    except (ValueError, KeyError, TypeError):
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


@dataclass
class SegmentRows:
    """The rows decoded from one segment (COLUMNS order), with what was wrong with it."""

    path: Path
    header: dict[str, Any]
    rows: list[Sequence[Any]]
    notes: list[str] = field(default_factory=list)


def read_segment(path: Path) -> SegmentRows:
    """Decode a segment; damage becomes notes, never an exception (except an unusable header)."""
    try:
        scan = journal.scan_file(path)
    except journal.JournalError as exc:
        raise CaptureError(f"{path}: {exc}") from None
    assert scan.header is not None
    header = scan.header
    check_version(header.get("format_version"), str(path))
    columns = tuple(header.get("columns") or ())
    notes = [d.describe(str(path)) for d in scan.damage]
    rows: list[Sequence[Any]] = []
    bad = 0
    with journal.gc_paused():
        for frame in scan.frames:
            try:
                rows.append(remap_row(columns, frame))
            except (RecordError, TypeError):
                bad += 1
    if bad:
        notes.append(f"{path}: {bad} frame(s) with a valid CRC did not decode as records; skipped")
    return SegmentRows(path, header, rows, notes)


def sort_rows(rows: list[Sequence[Any]]) -> None:
    rows.sort(key=itemgetter(START_IDX, SEQ_IDX))


def part_metadata(header: dict[str, Any]) -> dict[bytes, bytes]:
    return {
        META_FORMAT_VERSION: str(FORMAT_VERSION).encode(),
        META_LOADTAPE_VERSION: LOADTAPE_VERSION.encode(),
        META_CAPTURE_ID: str(header.get("capture_id", "")).encode(),
        META_WRITER_ID: str(header.get("writer_id", "")).encode(),
        META_REDACTION: json.dumps(header.get("redaction") or {}, sort_keys=True).encode(),
    }


def table_from_rows(
    rows: list[Sequence[Any]], metadata: dict[bytes, bytes] | None = None
) -> tuple[pa.Table, int]:
    """Sorted rows as a table; rows that do not fit the schema are dropped and counted, so one
    bad record cannot stop a whole segment from being compacted."""
    sort_rows(rows)
    try:
        with journal.gc_paused():
            return rows_to_table(rows, metadata), 0
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        good = []
        for row in rows:
            try:
                rows_to_table([row])
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                continue
            good.append(row)
        return rows_to_table(good, metadata), len(rows) - len(good)


def write_part(root: Path, writer_id: str, segment: int, table: pa.Table) -> Path | None:
    """Write a table as a Parquet part atomically. Returns the part path (None if empty)."""
    target = root / PARTS_DIR / part_name(writer_id, segment)
    if table.num_rows == 0:
        return None
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb", closefd=False) as fh:
            pq.write_table(table, fh, row_group_size=row_group_rows(table), compression="zstd")
            fh.flush()
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.rename(tmp, target)
    fsync_dir(target.parent)
    return target


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group: ROW_GROUP_ROWS, fewer when rows are large (big bodies)."""
    per_row = max(1, int(table.nbytes) // max(int(table.num_rows), 1))
    return max(64, min(ROW_GROUP_ROWS, ROW_GROUP_BYTES // per_row))


@dataclass
class Compacted:
    notes: list[str] = field(default_factory=list)  # damage found, records skipped
    rejected: int = 0  # records that did not fit the schema (counted as lost)


def compact_segment(
    root: Path,
    seg: SegmentFile,
    rows: list[Sequence[Any]] | None = None,
    header: dict[str, Any] | None = None,
) -> Compacted:
    """Compact one sealed segment into a part and delete the segment.

    The live writer passes the rows it wrote (no re-decoding); recovery reads them back from the
    segment. Raises OSError if the part cannot be written; the segment is then left in place."""
    part = root / PARTS_DIR / part_name(seg.writer_id, seg.segment)
    if part.exists():
        # A previous compaction renamed the part but died before deleting the segment.
        seg.path.unlink(missing_ok=True)
        return Compacted()
    notes: list[str] = []
    if rows is None or header is None:
        decoded = read_segment(seg.path)
        rows, header, notes = decoded.rows, decoded.header, decoded.notes
    table, bad = table_from_rows(rows, part_metadata(header))
    if bad:
        notes.append(f"{seg.path}: {bad} record(s) did not fit the schema; skipped")
    write_part(root, seg.writer_id, seg.segment, table)
    seg.path.unlink(missing_ok=True)
    fsync_dir(seg.path.parent)
    return Compacted(notes, bad)


def recover(root: Path) -> tuple[list[str], list[SegmentFile]]:
    """Compact the segments of writers that are no longer alive.

    Returns (notes about damage found, segments left in place: live writers' or unwritable)."""
    notes: list[str] = []
    left: list[SegmentFile] = []
    by_writer: dict[str, list[SegmentFile]] = {}
    for seg in list_segments(root):
        by_writer.setdefault(seg.writer_id, []).append(seg)
    jdir = root / JOURNAL_DIR
    for writer_id, segs in by_writer.items():
        try:
            lock = try_lock(jdir, writer_id)
        except OSError:
            left.extend(segs)  # read-only directory: the reader reads segments in place
            continue
        if lock is None:
            left.extend(segs)  # a live writer owns them
            continue
        try:
            for seg in segs:
                try:
                    notes.extend(compact_segment(root, seg).notes)
                except CaptureError as exc:
                    notes.append(f"{exc}; segment left in place")
                    left.append(seg)
                except OSError as exc:
                    notes.append(f"{seg.path}: could not compact ({exc.strerror}); read in place")
                    left.append(seg)
        finally:
            lock.release(unlink=not any(s.writer_id == writer_id for s in left))
    if notes:
        log_recovery(root, notes)
    return notes, left


def log_recovery(root: Path, notes: list[str]) -> None:
    """Keep what recovery found in the capture, so `inspect` reports it later too."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        fd = open_private(root / RECOVERY_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, "".join(f"{stamp} {n}\n" for n in notes).encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # read-only capture: the notes are still returned to the caller


def read_recovery_log(root: Path) -> list[str]:
    try:
        return (root / RECOVERY_LOG).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def iter_part_files(root: Path) -> Iterator[tuple[Path, pq.ParquetFile]]:
    for path in list_parts(root):
        yield path, open_part(path)


def open_part(path: Path) -> pq.ParquetFile:
    """Open a part for streaming (no pre-buffering of whole files) and check its version."""
    try:
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (OSError, ValueError) as exc:
        raise CaptureError(f"{path}: not a readable Parquet part ({_short(exc)})") from None
    meta = pf.schema_arrow.metadata or {}
    if META_FORMAT_VERSION not in meta:
        raise CaptureError(f"{path}: Parquet file without loadtape capture metadata")
    check_version(meta[META_FORMAT_VERSION].decode(errors="replace"), str(path))
    return pf


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
