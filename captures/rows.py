"""Arrow record batches as the Python rows a reader yields (dicts in column order) or as its
column lists, header lists as (name, value) pairs."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import pyarrow as pa

from .schema import HEADER_COLUMNS, Record

Columns = dict[str, list[Any]]  # a batch's columns as Python lists, by name
Chunk = tuple[Columns, int, int]  # rows i..j-1 of those columns
T = TypeVar("T")


def batch_columns(batch: pa.RecordBatch) -> Columns:
    """The batch's columns as lists, headers as lists of (name, value): what a planner reads
    a column at a time (a Request or a Shot made from lists zipped, no dict per row). Headers
    are paired straight from the list arrays: `to_pylist` made a dict per header, then each
    became a tuple, about 4 us a row for an SDK's 15 headers."""
    return {
        n: _header_lists(batch.column(i)) if n in HEADER_COLUMNS else batch.column(i).to_pylist()
        for i, n in enumerate(batch.schema.names)
    }


def column_rows(cols: Columns, i: int, j: int, names: Sequence[str] | None = None) -> list[Record]:
    """Rows i..j-1 of `cols` as dicts (of `names`, in that order; default every column).

    The dicts are copies of one with every key, filled a column at a time: half the time of a
    dict made from each row's values (1.8 -> 0.9 us a row of 26 columns), since a copy is made
    at its size and its keys' hashes are known."""
    keys = list(cols) if names is None else list(names)
    if not keys:
        return []
    blank: Record = dict.fromkeys(keys)
    rows = [blank.copy() for _ in range(j - i)]
    for n in keys:
        for row, v in zip(rows, cols[n][i:j], strict=True):
            row[n] = v
    return rows


def per_batch(chunks: Iterable[Chunk], convert: Callable[[Columns], list[T]]) -> Iterator[T]:
    """The items of rows i..j-1 of each chunk, each batch's columns converted once whole
    (`convert(cols)`: an item per row), however finely the merge interleaves ranges of it: two
    writers' rows alternating make chunks of one row, and converting each alone cost 3x a row.
    A batch's items are let go once a chunk reaches its end."""
    done: dict[int, tuple[Columns, list[T]]] = {}  # by the batch's dict (held: its id stays)
    for cols, i, j in chunks:
        hit = done.get(id(cols))
        if hit is None or hit[0] is not cols:
            hit = done[id(cols)] = (cols, convert(cols))
        items = hit[1]
        if j - i == 1:  # rows alternating: no slice
            yield items[i]
        else:
            yield from items[i:j] if i or j < len(items) else items
        if j >= len(items):
            del done[id(cols)]


def chunk_of(rows: Sequence[Record]) -> Chunk:
    """Rows as one chunk of column lists (column_rows' inverse): a planner's source made of
    rows, as tests write them. A key one row lacks is None in that row."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}, 0, len(rows)


def batch_rows(batch: pa.RecordBatch) -> list[Record]:
    """The batch's rows as dicts in column order, headers as lists of (name, value)."""
    return column_rows(batch_columns(batch), 0, batch.num_rows)


def _header_lists(col: pa.Array) -> list[list[tuple[str, str]] | None]:
    offs = col.offsets.to_pylist()
    lo = offs[0]
    vals = col.values.slice(lo, offs[-1] - lo)  # (values ignores the array's own slice)
    pairs = list(zip(vals.field("name").to_pylist(), vals.field("value").to_pylist(), strict=True))
    out: list[list[tuple[str, str]] | None] = [
        pairs[a - lo : b - lo] for a, b in itertools.pairwise(offs)
    ]
    if col.null_count:
        for i, ok in enumerate(col.is_valid().to_pylist()):
            if not ok:
                out[i] = None
    return out
