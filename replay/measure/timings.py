"""The timing metrics of a batch of results, the one definition of each (the histograms,
compare's per-request samples and the live endpoint all use it), computed in steps: the open
loop records results in its idle time between shots, and a step longer than the gap to the
next shot makes that shot late."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def ints(col: Any, missing: int = 0) -> np.ndarray:
    """A column of integers (a list, or Arrow: converted without a Python int per value) as
    int64, nulls as `missing`."""
    if isinstance(col, pa.Array | pa.ChunkedArray):
        if col.null_count == len(col):  # (a column the surface has no use for: common)
            return np.full(len(col), missing, dtype=np.int64)
        if col.null_count:
            col = pc.fill_null(col, missing)
        return np.asarray(col.to_numpy(), dtype=np.int64)
    return np.array([missing if v is None else v for v in col], dtype=np.int64)


def timings(b: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The timing metrics of a batch of results (column lists, epoch ns), in microseconds, one
    value per row: latency, service, lag, and ttfb / ttft / tpot (-1 where a request has none);
    plus `itl`, every inter-token gap, with `itl_row`, the row it belongs to."""
    out: dict[str, np.ndarray] = {}
    for _ in timing_steps(b, out):
        pass
    return out


def timing_steps(b: Mapping[str, Any], out: dict[str, np.ndarray]) -> Iterator[None]:
    """timings(b) into `out`, yielding between its steps (each a few column conversions or
    array operations: tens of microseconds for a slice of 512 rows)."""

    def arr(name: str, missing: int = -1) -> np.ndarray:
        return ints(b[name], missing)

    intended, sent, end = (arr(c) for c in ("intended_ns", "sent_ns", "end_ns"))
    yield
    headers, first = arr("headers_ns"), arr("first_token_ns")
    first_text = arr("first_text_ns") if "first_text_ns" in b else np.full(len(sent), -1)
    yield
    ctoks = arr("completion_tokens", 0)
    yield
    toks = b["token_offsets_us"]
    if isinstance(toks, pa.Array | pa.ChunkedArray):
        lists = toks.combine_chunks() if isinstance(toks, pa.ChunkedArray) else toks
        ntok_events = np.asarray(pc.fill_null(pc.list_value_length(lists), 0), dtype=np.int64)
        flat_arrow = np.asarray(lists.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    else:
        ntok_events = np.array([len(t) if t else 0 for t in toks], dtype=np.int64)
        flat_arrow = None
    yield
    us = 1000
    n_out = np.where(ctoks > 0, ctoks, ntok_events)
    out["latency"] = (end - intended) // us
    out["service"] = (end - sent) // us
    out["lag"] = np.maximum(sent - intended, 0) // us
    out["ttfb"] = np.where(headers >= 0, (headers - sent) // us, -1)
    yield
    out["ttft"] = np.where(first >= 0, (first - sent) // us, -1)
    out["ttft_text"] = np.where(first_text >= 0, (first_text - sent) // us, -1)
    out["tpot"] = np.where(
        (first >= 0) & (n_out > 1), (end - first) // np.maximum(n_out - 1, 1) // us, -1
    )
    # inter-token gaps: flatten every request's token offsets, diff, drop the seams
    total = int(ntok_events.sum())
    if total > 0:
        yield
        flat = (
            flat_arrow
            if flat_arrow is not None
            else np.fromiter((t for ts in toks if ts for t in ts), dtype=np.int64, count=total)
        )
        row = np.repeat(np.arange(len(ntok_events)), ntok_events)
        same = np.diff(row) == 0
        out["itl"], out["itl_row"] = np.diff(flat)[same], row[1:][same]
    else:
        out["itl"] = out["itl_row"] = np.empty(0, dtype=np.int64)
