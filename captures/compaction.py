"""Journal segments into Parquet parts: decoding a segment (damage reported, never raised),
writing a part atomically (temporary file, fsync, rename), compacting a sealed segment, and
recovering the segments of writers that died. The directory layout, manifest and locks they work
on are in store.py; see there for why a crash at any point loses nothing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Sequence
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
from .store import (
    JOURNAL_DIR,
    PARTS_DIR,
    RECOVERY_LOG,
    SegmentFile,
    check_version,
    fsync_dir,
    list_segments,
    open_private,
    part_name,
    try_lock,
)

ROW_GROUP_ROWS = 4096
ROW_GROUP_BYTES = 8 << 20  # readers decode a row group's column chunk at once: keep it small


@dataclass
class SegmentRows:
    """The rows decoded from one segment (COLUMNS order), with what was wrong with it."""

    path: Path
    header: dict[str, Any]
    rows: list[Sequence[Any]]
    notes: list[str] = field(default_factory=list)


def read_segment(path: Path) -> SegmentRows:
    """Decode a segment; damage becomes notes, never an exception (except a header that is
    there and is not ours). A segment cut before its header frame was whole (what a kill between
    creating a segment and writing its header leaves) holds nothing: it reads as empty, said so.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) < journal.HEAD_SIZE or journal.cut_in_header(data):
        return SegmentRows(
            path,
            {},
            [],
            [
                f"{path}: empty segment ({len(data)} bytes, no whole header frame): "
                "recovered as empty"
            ],
        )
    try:
        scan = journal.scan_bytes(data)
    except journal.JournalError as exc:
        raise CaptureError(f"{path}: {exc}") from None
    if scan.header is None:
        return SegmentRows(path, {}, [], [f"{path}: empty segment: recovered as empty"])
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
            pq.write_table(
                table,
                fh,
                row_group_size=row_group_rows(table),
                compression="zstd",
                write_page_checksum=True,  # a damaged page is an error on read, not wrong data
            )
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
    notes.extend(_remove_stale_parts(root, by_writer))
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


def _remove_stale_parts(root: Path, by_writer: dict[str, list[SegmentFile]]) -> list[str]:
    """Temporary part files a compaction cut short left behind (`.part-<writer>-<n>...tmp`):
    removed when their writer is not alive (its segment is still there and is compacted
    again)."""
    notes = []
    jdir = root / JOURNAL_DIR
    for tmp in sorted((root / PARTS_DIR).glob(".part-*.tmp")):
        m = _TMP_PART_RE.match(tmp.name)
        writer_id = m.group(1) if m else None
        if writer_id is not None and writer_id in by_writer:
            try:
                lock = try_lock(jdir, writer_id)
            except OSError:
                continue
            if lock is None:
                continue  # a live writer is compacting it right now
            lock.release(unlink=False)
        try:
            tmp.unlink()
        except OSError:
            continue
        notes.append(f"{tmp}: removed a temporary part left by a compaction cut short")
    return notes


_TMP_PART_RE = re.compile(r"^\.part-([A-Za-z0-9_.]+)-\d{6,}\.parquet\.[0-9a-f]+\.tmp$")


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
