"""Read a capture: records in request-start order across all parts, in bounded memory.

Each part is sorted by request start. `Capture.rows()` merges them k-way, opening a part only when
the merge reaches the first request start in it (known from Parquet statistics), so memory holds
one batch per part that overlaps the current instant, not one per part. Parts are read with
`pre_buffer=False` and a small read buffer: pyarrow would otherwise buffer a whole file.

Journal segments still on disk (a live writer's, or in a read-only directory) are read in place as
extra sorted runs.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from . import compaction, store
from .errors import CaptureError
from .filters import RowFilter
from .rows import Chunk, Columns, column_rows, per_batch
from .runs import READ_BYTES, Cursor, Run, open_part, run_batches, sliced
from .schema import COLUMNS, SCHEMA, Record


@dataclass
class PartInfo:
    path: Path
    rows: int
    min_start: int | None
    max_start: int | None
    writer_id: str
    redaction: str


class Capture:
    """An open capture (directory, or a single part file). Recovers dead writers' segments."""

    def __init__(
        self, path: str | Path, *, recover: bool = True, skip_damaged: bool = False
    ) -> None:
        """skip_damaged: a damaged part is left out (from where the damage is) and said so in
        `notes` and `damaged`, instead of being an error."""
        self.path = Path(path)
        self.notes: list[str] = []
        self.skip_damaged = skip_damaged
        self.damaged: list[str] = []
        self._segment_runs: list[Run] = []
        if self.path.is_file():
            self.manifest = None
            self._part_paths = [self.path]
        elif self.path.is_dir():
            self.manifest = store.read_manifest(self.path)
            has_layout = (self.path / store.PARTS_DIR).is_dir() or (
                self.path / store.JOURNAL_DIR
            ).is_dir()
            if self.manifest is None and not has_layout:
                raise CaptureError(
                    f"{self.path}: not a capture (no capture.json, parts or journal)"
                )
            left = store.list_segments(self.path)
            if recover and left:
                _, left = compaction.recover(self.path)
            self.notes.extend(compaction.read_recovery_log(self.path))
            self._part_paths = store.list_parts(self.path)
            self._load_segments(left)
        elif self.path.exists():
            raise CaptureError(f"{self.path}: not a capture (not a file or directory)")
        else:
            raise CaptureError(f"{self.path}: no such capture")
        self._runs: list[Run] = []
        self.parts: list[PartInfo] = []
        for i, p in enumerate(self._part_paths):
            try:
                self._add_part(i, p)
            except CaptureError as exc:
                if not skip_damaged:
                    raise
                self._skip(str(exc))
        for run in self._segment_runs:
            run.order = len(self._runs)
            self._runs.append(run)

    def verify(self) -> None:
        """Read every column of every part (page checksums checked), in bounded memory: a
        damaged part is an error naming it, or with skip_damaged, left out and said so."""
        for part in list(self.parts):
            try:
                pf = open_part(part.path)
                for _ in pf.iter_batches(batch_size=4096, use_threads=False):
                    pass
            except (OSError, pa.ArrowException) as exc:
                what = f"{part.path}: damaged Parquet part ({str(exc).splitlines()[0][:200]})"
                if not self.skip_damaged:
                    raise CaptureError(what) from None
                self._skip(what)
                self.parts.remove(part)
                self._runs = [r for r in self._runs if r.path != part.path]
            except CaptureError as exc:
                if not self.skip_damaged:
                    raise
                self._skip(str(exc))

    def _skip(self, what: str) -> None:
        self.damaged.append(what)
        self.notes.append(f"{what}; skipped (--skip-damaged)")

    def _guarded(self, run: Run, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """A part's batches; with skip_damaged, a damaged part ends where its damage is."""
        try:
            yield from batches
        except CaptureError as exc:
            if not self.skip_damaged:
                raise
            self._skip(str(exc))

    @property
    def capture_id(self) -> str | None:
        if self.manifest is not None:
            return self.manifest.capture_id
        return self.parts[0].path.name if self.parts else None

    def _add_part(self, order: int, path: Path) -> None:
        pf = open_part(path)
        md = pf.metadata
        names = pf.schema_arrow.names
        if "req_start_ns" not in names:
            raise CaptureError(f"{path}: part has no req_start_ns column (wrong schema)")
        idx = names.index("req_start_ns")
        lo: int | None = None
        hi: int | None = None
        for rg in range(md.num_row_groups):
            st = md.row_group(rg).column(idx).statistics
            if st is None or not st.has_min_max:
                lo = hi = None
                break
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
        kv = pf.schema_arrow.metadata or {}
        self.parts.append(
            PartInfo(
                path,
                md.num_rows,
                lo,
                hi,
                kv.get(b"loadtape.writer_id", b"").decode(),
                kv.get(b"loadtape.redaction", b"{}").decode(),
            )
        )
        if md.num_rows:
            self._runs.append(
                Run(order, lo if lo is not None else -(2**63), hi or 0, md.num_rows, path)
            )

    def _load_segments(self, segments: list[store.SegmentFile]) -> None:
        for seg in segments:
            try:
                decoded = compaction.read_segment(seg.path)
            except CaptureError as exc:
                self.notes.append(str(exc))
                continue
            self.notes.extend(decoded.notes)
            table, bad = compaction.table_from_rows(decoded.rows)
            if bad:
                self.notes.append(f"{seg.path}: {bad} record(s) did not fit the schema; skipped")
            if not table.num_rows:
                continue
            starts = table.column("req_start_ns").to_pylist()
            self.notes.append(
                f"{seg.path}: {table.num_rows} records read from an uncompacted journal segment"
            )
            self._segment_runs.append(
                Run(0, starts[0], starts[-1], len(starts), seg.path, segment_table=table)
            )

    # -- summary -------------------------------------------------------------------------------
    def count(self) -> int:
        return sum(r.rows_total for r in self._runs)

    def time_span(self) -> tuple[int, int] | None:
        """(first, last) request start in ns, from statistics (no data read)."""
        if not self._runs:
            return None
        return min(r.min_start for r in self._runs), max(r.max_start for r in self._runs)

    # -- reading -------------------------------------------------------------------------------
    def batches(
        self,
        columns: Sequence[str] | None = None,
        filt: RowFilter | None = None,
        batch_size: int = 8192,
    ) -> Iterator[pa.RecordBatch]:
        """Record batches part by part (not merged: for whole-capture statistics)."""
        cols = _projection(columns)
        for run in self._runs:
            yield from self._guarded(run, run_batches(run, cols, filt, batch_size))

    def rows(
        self,
        columns: Sequence[str] | None = None,
        filt: RowFilter | None = None,
        batch_size: int = 1024,
    ) -> Iterator[Record]:
        """Records as dicts in (request start, part) order; headers as lists of (name, value)."""
        cols = _projection(columns)

        def as_rows(chunk: Columns) -> list[Record]:
            return column_rows(chunk, 0, len(chunk["req_start_ns"]), cols)

        return per_batch(self.chunks(cols, filt, batch_size), as_rows)

    def chunks(
        self,
        columns: Sequence[str] | None = None,
        filt: RowFilter | None = None,
        batch_size: int = 1024,
    ) -> Iterator[Chunk]:
        """The same records as column lists: each chunk is rows i..j-1 of one part's slice of
        `batch_size` (its `req_start_ns` list among them), in (request start, part) order. A
        planner makes its objects from the lists zipped, without a dict per row."""
        need = _projection(columns)
        if "req_start_ns" not in need:
            need.append("req_start_ns")
        return self._merged(need, filt, batch_size)

    def _merged(self, cols: list[str], filt: RowFilter | None, batch_size: int) -> Iterator[Chunk]:
        """Yield chunks of rows, globally ordered, merging the runs lazily.

        The run with the smallest next key yields every row up to the next competitor's key in
        one chunk (bisect on its start column), so non-overlapping parts cost no per-row heap
        work.
        """
        pending = sorted(self._runs, key=lambda r: (r.min_start, r.order))
        pending.reverse()  # pop() from the end = smallest min_start
        # heap entries: (start of current row, run order, cursor)
        heap: list[tuple[int, int, Cursor]] = []

        def activate(run: Run) -> None:
            # Parquet is read and filtered in large batches (each batch costs a fixed few
            # hundred us to decode, mask and filter), and turned into Python lists a slice of
            # `batch_size` at a time, so the conversion never holds the GIL long.
            read = run_batches(run, cols, filt, batch_size, READ_BYTES)
            cur = Cursor(run, sliced(self._guarded(run, read), batch_size))
            if cur.advance_batch():
                heapq.heappush(heap, (cur.starts[cur.i], run.order, cur))

        while heap or pending:
            if not heap:
                activate(pending.pop())
                continue
            start, order, cur = heap[0]
            if pending and (pending[-1].min_start, pending[-1].order) <= (start, order):
                activate(pending.pop())
                continue
            heapq.heappop(heap)
            # Bound: the smallest key among the other active runs and the next pending run.
            bound: tuple[int, int] | None = (heap[0][0], heap[0][1]) if heap else None
            if pending:
                p = (pending[-1].min_start, pending[-1].order)
                bound = p if bound is None or p < bound else bound
            if bound is None:
                j = len(cur.starts)
            elif order < bound[1]:
                j = bisect_right(cur.starts, bound[0], cur.i)
            else:
                j = bisect_left(cur.starts, bound[0], cur.i)
            j = max(j, cur.i + 1)
            yield cur.cols, cur.i, j
            cur.i = j
            if cur.i >= len(cur.starts) and not cur.advance_batch():
                continue
            heapq.heappush(heap, (cur.starts[cur.i], order, cur))

    def records(
        self, columns: Sequence[str] | None = None, filt: RowFilter | None = None
    ) -> list[Record]:
        """All matching rows in order (small captures and tests)."""
        return list(self.rows(columns, filt))

    def table(
        self, columns: Sequence[str] | None = None, filt: RowFilter | None = None
    ) -> pa.Table:
        """All matching rows as one unordered table (columnar statistics)."""
        cols = _projection(columns)
        batches = list(self.batches(cols, filt))
        schema = pa.schema([SCHEMA.field(c) for c in cols])
        return pa.Table.from_batches(batches, schema=schema)


def _projection(columns: Iterable[str] | None) -> list[str]:
    if columns is None:
        return list(COLUMNS)
    cols = list(dict.fromkeys(columns))
    unknown = [c for c in cols if c not in COLUMNS]
    if unknown:
        raise CaptureError(f"unknown column(s): {', '.join(unknown)}")
    return cols


def open_capture(path: str | Path, *, recover: bool = True) -> Capture:
    return Capture(path, recover=recover)
