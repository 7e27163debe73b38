"""CaptureWriter: append records to the journal, fsync on a policy, compact sealed segments.

One writer belongs to one thread (the capture addon runs it on its own writer thread). Records are
written to the OS on every `append_many`/`tick` (so a killed process loses nothing written) and
fsynced when `sync_interval` has passed since the last fsync or `sync_every` records are pending
(so a power loss loses at most that window). The owner calls `tick()` at least every
`sync_interval` so a quiet period still gets its fsync.

Disk errors do not lose records silently: a failed write truncates the segment back to its last
good frame and keeps the frames pending (up to `max_pending_bytes`); records past that are dropped
and counted in `lost`. The next call retries. A segment that cannot be compacted stays on disk and
is retried later; it is already durable.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from . import journal, store
from .compaction import compact_segment
from .compaction import recover as recover_dead_writers
from .compactor import ProcessCompactor
from .schema import COLUMNS, FORMAT_VERSION, Record, to_row


class CaptureWriter:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        writer_id: str | None = None,
        capture_id: str | None = None,
        redaction: dict[str, Any] | None = None,
        sync_interval: float = 0.1,
        sync_every: int = 4096,
        segment_max_records: int = 20_000,
        segment_max_bytes: int = 32 << 20,
        segment_max_age: float = 60.0,
        max_pending_bytes: int = 64 << 20,
        compaction: str = "inline",
        recover: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(directory)
        self.manifest = store.ensure_capture(self.root, capture_id)
        self.capture_id = self.manifest.capture_id
        self.writer_id = writer_id or store.new_id("w")
        self.redaction = redaction or {}
        self.sync_interval = sync_interval
        self.sync_every = sync_every
        self.segment_max_records = segment_max_records
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age = segment_max_age
        self.max_pending_bytes = max_pending_bytes
        if compaction not in ("inline", "process"):
            raise ValueError(f"compaction must be 'inline' or 'process', not {compaction!r}")
        self.compaction = compaction
        self._compactor: ProcessCompactor | None = None
        self._clock = clock
        self._jdir = self.root / store.JOURNAL_DIR
        self._lock = store.WriterLock(self._jdir, self.writer_id)
        self.notes: list[str] = []
        if recover:
            notes, _ = recover_dead_writers(self.root)
            self.notes.extend(notes)
        self.seq = 0
        self.appended = 0  # records accepted
        self.written = 0  # records handed to the OS
        self.synced = 0  # records fsynced
        self.lost = 0  # records dropped because the disk refused them for too long
        self.rejected = 0  # records that did not fit the schema at compaction (also lost)
        self.parts_written = 0
        self.last_error: OSError | None = None
        self._segment = -1
        self._fd = -1
        self._seg_records = 0
        self._seg_size = 0
        self._seg_opened = 0.0
        self._pending: list[bytes] = []
        self._pending_rows: list[Sequence[Any]] = []
        self._pending_bytes = 0
        self._pending_records = 0
        self._last_sync = clock()
        self._unsynced = 0
        self._seg_rows: list[Sequence[Any]] = []  # rows of the open segment, for compaction
        self._seg_header: dict[str, Any] = {}
        # sealed segments waiting for compaction, with their rows (None: re-read from disk)
        self._to_compact: list[tuple[store.SegmentFile, list[Sequence[Any]] | None]] = []
        # this writer's segments not yet in a Parquet part: segment -> when it was opened
        self._uncompacted: dict[int, float] = {}
        self._closed = False

    # -- segments ------------------------------------------------------------------------------
    def _open_segment(self) -> None:
        self._segment += 1
        path = self._jdir / store.segment_name(self.writer_id, self._segment)
        header = journal.segment_header(
            format_version=FORMAT_VERSION,
            writer_id=self.writer_id,
            capture_id=self.capture_id,
            segment=self._segment,
            columns=COLUMNS,
            redaction=self.redaction,
        )
        fd = store.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        data = journal.encode_frame(header)
        try:
            _write_all(fd, data)
            os.fsync(fd)
            store.fsync_dir(self._jdir)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            self._segment -= 1
            raise
        self._fd = fd
        self._seg_header = header
        self._seg_rows = []
        self._seg_records = 0
        self._seg_size = len(data)
        self._seg_opened = self._clock()
        self._uncompacted[self._segment] = self._seg_opened

    def _seal(self) -> None:
        """Close the current segment (after a final fsync) and queue it for compaction."""
        if self._fd < 0:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self.synced = self.written
        self._unsynced = 0
        path = self._jdir / store.segment_name(self.writer_id, self._segment)
        seg = store.SegmentFile(path, self.writer_id, self._segment)
        self._to_compact.append((seg, self._seg_rows if self.compaction == "inline" else None))
        self._seg_rows = []

    def _compactor_started(self) -> ProcessCompactor | None:
        if self._compactor is None:
            try:
                self._compactor = ProcessCompactor(self.root)
            except OSError as exc:
                self.notes.append(f"compactor process did not start ({exc}); compacting inline")
                self.compaction = "inline"
                return None
        return None if self._compactor.dead else self._compactor

    def _collect_compactor(self) -> None:
        """Take the child's results; segments it failed or dropped go back to the queue."""
        if self._compactor is None:
            return
        for r in self._compactor.poll():
            if r.ok:
                self._uncompacted.pop(r.segment, None)
                self.parts_written += 1
                self.notes.extend(r.notes)
                self.rejected += r.rejected
            else:
                self.notes.append(f"compactor: segment {r.segment}: {r.error}; retrying inline")
                seg = store.SegmentFile(
                    self._jdir / store.segment_name(self.writer_id, r.segment),
                    self.writer_id,
                    r.segment,
                )
                self._to_compact.append((seg, None))
        for seg in self._compactor.orphans():
            self._to_compact.append((seg, None))

    def _compact_pending(self) -> None:
        if self.compaction == "process":
            self._collect_compactor()
            comp = self._compactor_started() if self._to_compact else self._compactor
            while self._to_compact and comp is not None and not comp.dead:
                seg, rows = self._to_compact[0]
                if rows is not None or not comp.submit(seg):
                    break  # rows in hand (or the child is gone): compact inline below
                self._to_compact.pop(0)
            if comp is None or not comp.dead:
                return
            self._collect_compactor()
        while self._to_compact:
            seg, rows = self._to_compact[0]
            try:
                done = compact_segment(self.root, seg, rows, self._seg_header)
                self.notes.extend(done.notes)
                self.rejected += done.rejected
            except OSError:
                # The segment is durable on disk; free the rows and re-read it on the retry.
                self._to_compact[0] = (seg, None)
                raise
            self._to_compact.pop(0)
            self._uncompacted.pop(seg.segment, None)
            self.parts_written += 1

    # -- appending -----------------------------------------------------------------------------
    def append(self, record: Record) -> int:
        return self.append_many([record])[0]

    def append_many(self, records: Iterable[Record]) -> list[int]:
        """Accept records (assigning capture id, writer id and seq) and write them to the OS.

        A batch larger than the room left in the segment is split so segments keep their size.
        Raises OSError if the disk refuses them; they stay pending (see the module docstring)."""
        recs = list(records)
        seqs: list[int] = []
        i = 0
        while i < len(recs):
            room = max(1, self.segment_max_records - self._seg_records - self._pending_records)
            seqs += self._append_chunk(recs[i : i + room])
            i += room
        return seqs

    def _append_chunk(self, records: list[Record]) -> list[int]:
        seqs = []
        rows = []
        for rec in records:
            row = to_row(rec, (self.capture_id, self.writer_id, self.seq))
            seqs.append(self.seq)
            self.seq += 1
            rows.append(row)
        if not rows:
            return seqs
        data = journal.encode_frames(rows)
        self.appended += len(rows)
        if self._pending_bytes + len(data) > self.max_pending_bytes and self._pending:
            self.lost += len(rows)
            self._write_pending()  # try once more; raises if the disk still refuses
            return seqs
        self._pending.append(data)
        self._pending_rows.extend(rows)
        self._pending_bytes += len(data)
        self._pending_records += len(rows)
        self._write_pending()
        return seqs

    def _write_pending(self) -> None:
        if not self._pending:
            return
        if self._fd < 0:
            self._open_segment()
        data = b"".join(self._pending)
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self.last_error = exc
            # Cut back to the last good frame so the segment stays clean; keep the data pending.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._seg_size)
            self._pending = [data]
            raise
        self.last_error = None
        self._seg_size += len(data)
        self._seg_records += self._pending_records
        if self.compaction == "inline":
            self._seg_rows.extend(self._pending_rows)
        self._pending_rows = []
        self.written += self._pending_records
        self._unsynced += self._pending_records
        self._pending = []
        self._pending_bytes = 0
        self._pending_records = 0
        if self._unsynced >= self.sync_every:
            self._sync()
        if (
            self._seg_records >= self.segment_max_records
            or self._seg_size >= self.segment_max_bytes
        ):
            self._seal()
            self._compact_pending()

    def _sync(self) -> None:
        if self._fd >= 0 and self._unsynced:
            os.fsync(self._fd)
        self.synced = self.written
        self._unsynced = 0
        self._last_sync = self._clock()

    def tick(self) -> None:
        """Write pending frames, fsync when due, seal an old segment, retry compaction."""
        self._write_pending()
        now = self._clock()
        if self._unsynced and now - self._last_sync >= self.sync_interval:
            self._sync()
        if self._fd >= 0 and now - self._seg_opened >= self.segment_max_age and self._seg_records:
            self._seal()
        self._compact_pending()

    def sync(self) -> None:
        """Write and fsync everything accepted so far."""
        self._write_pending()
        self._sync()

    @property
    def pending_records(self) -> int:
        return self._pending_records

    @property
    def journal_lag_s(self) -> float:
        """How long the oldest record not yet in a Parquet part has waited, at most: the age of
        the oldest of this writer's segments not yet compacted (an empty open one aside)."""
        idle = self._fd >= 0 and not self._seg_records and not self._pending_records
        opened = [t for seg, t in self._uncompacted.items() if not (idle and seg == self._segment)]
        return max(0.0, self._clock() - min(opened)) if opened else 0.0

    @property
    def compaction_state(self) -> dict[str, int]:
        """Where compaction stands: sealed segments queued for it, segments the compactor
        process holds now, and whether that process is up (1), gone (0, compacting inline
        since) or never needed (-1: inline compaction, or nothing sealed yet)."""
        comp = self._compactor
        return {
            "segments_queued": len(self._to_compact),
            "segments_compacting": len(comp.in_flight) if comp is not None else 0,
            "compactor_up": -1 if comp is None else int(not comp.dead),
            "rejected": self.rejected,
        }

    def close(self) -> None:
        """Write, fsync, seal and compact everything; release the writer lock.

        If the disk still refuses, the journal segments stay on disk (recovered on next open)."""
        if self._closed:
            return
        try:
            self._write_pending()
            self._seal()
            self._compact_pending()
            if self._compactor is not None:
                self._compactor.close()
                self._collect_compactor()
                self.compaction = "inline"
                self._compact_pending()
        finally:
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            leftover = any(s.writer_id == self.writer_id for s in store.list_segments(self.root))
            self._lock.release(unlink=not leftover)

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
