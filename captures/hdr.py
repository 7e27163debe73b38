"""HdrHistogram helpers: vectorized recording, encoding, merging.

`record_many` gives exactly what a loop of `HdrHistogram.record_value` gives (same bucket for
every value; out-of-range values not recorded and counted) but computes the bucket indices with
numpy and adds one bincount into the histogram's counts array, so recording a batch of results
costs microseconds, not a Python call per value.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

LATENCY_LOWEST_US = 1
LATENCY_HIGHEST_US = 3_600_000_000  # 1 h in microseconds
SIGNIFICANT_DIGITS = 3


def acyclic(h: HdrHistogram) -> HdrHistogram:
    """`h` with its encoder's reference back to it made weak. hdrh's histogram and its encoder
    (which holds the counts) refer to each other: a cycle, freed only by a full collection,
    which a run holds off (replay/runner.py quiet_gc). So every histogram dropped during a run
    stayed until its end: the three interval histograms of each second (~190 KB each), 0.55 MB
    a second whatever the rate."""
    h.encoder.histogram = weakref.proxy(h)
    return h


def new_latency_hist() -> HdrHistogram:
    return acyclic(HdrHistogram(LATENCY_LOWEST_US, LATENCY_HIGHEST_US, SIGNIFICANT_DIGITS))


def new_hist(highest: int, lowest: int = 1, digits: int = SIGNIFICANT_DIGITS) -> HdrHistogram:
    return acyclic(HdrHistogram(lowest, highest, digits))


def _counts_view(h: HdrHistogram) -> np.ndarray:
    view: np.ndarray = np.ctypeslib.as_array(h.counts)
    return view


def counts_indices(h: HdrHistogram, values: np.ndarray) -> np.ndarray:
    """The counts-array index of each (non-negative int64) value, as HdrHistogram computes it."""
    v = values.astype(np.int64, copy=False)
    masked = v | np.int64(h.sub_bucket_mask)
    # bit_length via frexp: exact for integers below 2**53.
    _, exp = np.frexp(masked.astype(np.float64))
    bucket = exp.astype(np.int64) - h.unit_magnitude - (h.sub_bucket_half_count_magnitude + 1)
    sub = v >> (bucket + h.unit_magnitude)
    idx: np.ndarray = ((bucket + 1) << h.sub_bucket_half_count_magnitude) + sub
    idx -= h.sub_bucket_half_count
    return idx


def record_many(h: HdrHistogram, values: Iterable[int] | np.ndarray) -> int:
    """Record every value; returns how many were out of range (negative or too large)."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.int64)
    if arr.size == 0:
        return 0
    if arr.size < 32:
        # numpy's fixed cost per call (tens of us) is more than a few values in Python
        return _record_few(h, arr.tolist())
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < 2**53:
        idx = counts_indices(h, arr)
        first, last = int(idx.min()), int(idx.max())
        if first >= 0 and last < h.counts_len:
            # every value in range (the usual case): one bincount over the buckets they span
            span = np.bincount(idx - first, minlength=last - first + 1)
            _counts_view(h)[first : last + 1] += span.astype(np.uint64)
            h.total_count += int(arr.size)
            h.min_value = min(h.min_value, lo)
            h.max_value = max(h.max_value, hi)
            return 0
    ok = (arr >= 0) & (arr < 2**53)
    idx = np.full(arr.shape, -1, dtype=np.int64)
    idx[ok] = counts_indices(h, arr[ok])
    ok &= (idx >= 0) & (idx < h.counts_len)
    n_ok = int(ok.sum())
    if n_ok:
        good = arr[ok]
        counts = _counts_view(h)
        if n_ok * 8 < h.counts_len:
            # few values: touch only their buckets (a full-length bincount costs ~0.1 ms)
            u, c = np.unique(idx[ok], return_counts=True)
            counts[u] += c.astype(np.uint64)
        else:
            counts[:] += np.bincount(idx[ok], minlength=h.counts_len).astype(np.uint64)
        h.total_count += n_ok
        h.min_value = min(h.min_value, int(good.min()))
        h.max_value = max(h.max_value, int(good.max()))
    return int(arr.size - n_ok)


def _record_few(h: HdrHistogram, values: list[int]) -> int:
    """record_value for each value, its bucket computed here (hdrh's record_value measured
    ~2.5 us a value; this ~0.5 us): the index as counts_indices computes it."""
    mask, unit = h.sub_bucket_mask, h.unit_magnitude
    half_mag, half = h.sub_bucket_half_count_magnitude, h.sub_bucket_half_count
    counts, n = h.counts, h.counts_len
    bad = 0
    lo, hi, recorded = h.min_value, h.max_value, 0
    for v in values:
        if v < 0:
            bad += 1
            continue
        bucket = (v | mask).bit_length() - unit - (half_mag + 1)
        i = ((bucket + 1) << half_mag) + (v >> (bucket + unit)) - half
        if i < 0 or i >= n:
            bad += 1
            continue
        counts[i] += 1
        recorded += 1
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    if recorded:
        h.total_count += recorded
        h.min_value, h.max_value = lo, hi
    return bad


def add(dst: HdrHistogram, src: HdrHistogram) -> None:
    """dst += src for two histograms of the same layout, as one array add (hdrh's own add
    walks the counts in Python: milliseconds per call)."""
    if not src.total_count:
        return
    _counts_view(dst)[:] += _counts_view(src)
    dst.total_count += src.total_count
    dst.min_value = min(dst.min_value, src.min_value)
    dst.max_value = max(dst.max_value, src.max_value)


Sparse = tuple[np.ndarray, np.ndarray, int, int]  # filled bucket indices, their counts, min, max


def sparse(h: HdrHistogram) -> Sparse:
    """A histogram as its filled buckets only: a worker ships these (the counts array of a
    1 us..1 h histogram is 225 KB, its filled part a few hundred entries)."""
    counts = _counts_view(h)
    idx = np.flatnonzero(counts)
    return idx, counts[idx].copy(), int(h.min_value), int(h.max_value)


def add_sparse(h: HdrHistogram, s: Sparse) -> None:
    """h += a histogram of the same layout given as sparse()."""
    idx, cnt, lo, hi = s
    if not len(idx):
        return
    _counts_view(h)[idx] += cnt
    h.total_count += int(cnt.sum())
    h.min_value = min(h.min_value, lo)
    h.max_value = max(h.max_value, hi)


def encode(h: HdrHistogram) -> bytes:
    """The standard compressed V2 encoding (base64), readable by every HdrHistogram library."""
    out = h.encode()
    return out if isinstance(out, bytes) else out.encode()


def decode(blob: bytes | str) -> HdrHistogram:
    return acyclic(HdrHistogram.decode(blob))


def merged(blobs: Iterable[bytes | str], template: HdrHistogram | None = None) -> HdrHistogram:
    h = template or new_latency_hist()
    for b in blobs:
        h.decode_and_add(b)
    return h


def value_at_percentile(h: HdrHistogram, percentile: float) -> int:
    """What HdrHistogram.get_value_at_percentile returns, from a numpy cumsum instead of a Python
    loop over every bucket (1.7 ms per call for a 1 us..1 h histogram on the dev machine)."""
    if h.total_count <= 0:
        return 0
    target = max(int(min(percentile, 100.0) * h.total_count / 100 + 0.5), 1)
    idx = int(np.searchsorted(np.cumsum(_counts_view(h)), target, side="left"))
    value = h.get_value_from_index(idx)
    return int(
        h.get_highest_equivalent_value(value)
        if percentile
        else h.get_lowest_equivalent_value(value)
    )


def percentiles(h: HdrHistogram, pcts: Iterable[float]) -> dict[float, int]:
    if h.total_count <= 0:
        return dict.fromkeys(pcts, 0)
    cum = np.cumsum(_counts_view(h))
    out = {}
    for p in pcts:
        target = max(int(min(p, 100.0) * h.total_count / 100 + 0.5), 1)
        value = h.get_value_from_index(int(np.searchsorted(cum, target, side="left")))
        out[p] = int(
            h.get_highest_equivalent_value(value) if p else h.get_lowest_equivalent_value(value)
        )
    return out


def mean(h: HdrHistogram) -> float:
    """What HdrHistogram.get_mean_value returns, visiting only the buckets that hold values
    (hdrh's iterator walks all ~28k buckets of a 1 us..1 h histogram in Python: ~25 ms a call,
    and a report asks for one per metric and group)."""
    if h.total_count <= 0:
        return 0.0
    counts = _counts_view(h)
    total = 0
    for i in np.flatnonzero(counts).tolist():
        value = h.get_highest_equivalent_value(h.get_value_from_index(i))
        total += int(counts[i]) * int(h._hdr_median_equiv_value(value))
    return float(total) / int(h.total_count)
