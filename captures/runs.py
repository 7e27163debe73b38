"""The sorted runs a capture is read from (a Parquet part, or a journal segment in memory):
each read in batches of about READ_BYTES, filtered, in slices that become Python rows, with
columns an older writer did not have read as nulls."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import store
from .errors import CaptureError
from .filters import RowFilter
from .rows import Columns, batch_columns
from .schema import META_FORMAT_VERSION, SCHEMA


@dataclass
class Run:
    """One sorted source: a Parquet part or an in-memory journal segment."""

    order: int
    min_start: int
    max_start: int
    rows_total: int
    path: Path
    part: pq.ParquetFile | None = None
    segment_table: pa.Table | None = None


class Cursor:
    """A run in the merge: its current slice as column lists, their request starts, and how
    far the merge has got in it."""

    def __init__(self, run: Run, batches: Iterator[pa.RecordBatch]) -> None:
        self.run = run
        self._batches = batches
        self.cols: Columns = {}  # a new dict each slice: a chunk handed out stays whole
        self.starts: list[int] = []
        self.i = 0

    def advance_batch(self) -> bool:
        for batch in self._batches:
            if batch.num_rows == 0:
                continue
            self.cols = batch_columns(batch)
            self.starts = self.cols["req_start_ns"]
            self.i = 0
            return True
        return False

    def __lt__(self, other: Cursor) -> bool:  # never reached: (start, order) is unique
        return self.run.order < other.run.order


READ_BYTES = 1 << 20  # a part is read in batches of about this many bytes (or fewer rows)
READ_ROWS = 2048  # but never more rows than this


def read_rows(batch_size: int, read_bytes: int | None, nbytes: int, nrows: int) -> int:
    """Rows per read batch: `batch_size`, or as many more as fit in `read_bytes` at the part's
    mean row size (up to READ_ROWS)."""
    if read_bytes is None or nrows <= 0:
        return batch_size
    return max(batch_size, min(READ_ROWS, read_bytes * nrows // max(nbytes, 1)))


def sliced(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The batches in slices of at most `rows` (zero-copy)."""
    for batch in batches:
        for off in range(0, batch.num_rows, rows):
            yield batch.slice(off, rows)


def run_batches(
    run: Run,
    cols: list[str],
    filt: RowFilter | None,
    batch_size: int,
    read_bytes: int | None = None,
) -> Iterator[pa.RecordBatch]:
    fcols = filt.columns() if filt else set()
    read_cols = cols + [c for c in sorted(fcols) if c not in cols]
    if run.segment_table is not None:
        table = run.segment_table.select(read_cols)
        size = read_rows(batch_size, read_bytes, table.nbytes, table.num_rows)
        source: Iterable[pa.RecordBatch] = table.to_batches(size)
    else:
        pf = open_part(run.path)
        present = set(pf.schema_arrow.names)
        missing = [c for c in read_cols if c not in present]
        meta = pf.metadata
        nbytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        source = fill_missing(
            pf.iter_batches(
                batch_size=read_rows(batch_size, read_bytes, nbytes, meta.num_rows),
                columns=[c for c in read_cols if c in present],
                use_threads=False,
            ),
            read_cols,
            missing,
            run.path,
        )
    for batch in source:
        if filt is not None:
            mask = filt.mask(batch)
            if mask is not None:
                batch = batch.filter(mask)
        if len(read_cols) != len(cols):
            batch = batch.select(cols)
        yield batch


def fill_missing(
    batches: Iterator[pa.RecordBatch], cols: list[str], missing: list[str], path: Path
) -> Iterator[pa.RecordBatch]:
    """Columns an older writer did not have are read as nulls (adding a column is compatible)."""
    try:
        for batch in batches:
            if missing:
                arrays = []
                for c in cols:
                    if c in missing:
                        arrays.append(pa.nulls(batch.num_rows, SCHEMA.field(c).type))
                    else:
                        arrays.append(batch.column(c))
                batch = pa.RecordBatch.from_arrays(arrays, names=cols)
            yield batch
    except (OSError, pa.ArrowException) as exc:
        raise CaptureError(
            f"{path}: damaged Parquet part ({str(exc).splitlines()[0][:200]})"
        ) from None


def open_part(path: Path) -> pq.ParquetFile:
    """Open a part for streaming (no pre-buffering of whole files) and check its version."""
    try:
        pf = pq.ParquetFile(
            path, pre_buffer=False, buffer_size=1 << 20, page_checksum_verification=True
        )
    except (OSError, ValueError) as exc:
        raise CaptureError(f"{path}: not a readable Parquet part ({_short(exc)})") from None
    meta = pf.schema_arrow.metadata or {}
    if META_FORMAT_VERSION not in meta:
        raise CaptureError(f"{path}: Parquet file without loadtape capture metadata")
    store.check_version(meta[META_FORMAT_VERSION].decode(errors="replace"), str(path))
    return pf


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
