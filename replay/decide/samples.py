"""Per-request samples for `loadtape compare`: a bounded uniform sample of each timing metric per
group, read from results.parquet a batch at a time (memory stays bounded on runs of millions of
requests), with the counts behind it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from replay.measure.groups import route, status_class
from replay.measure.metrics import METRICS
from replay.measure.resultsdir import Results
from replay.measure.timings import timings

SAMPLE_CAP = 10_000
SAMPLE_COLUMNS = [
    "stream",
    "target",
    "api",
    "endpoint",
    "model",
    "status",
    "error_kind",
    "outcome",
    "intended_ns",
    "sent_ns",
    "headers_ns",
    "first_token_ns",
    "first_text_ns",
    "end_ns",
    "completion_tokens",
    "token_offsets_us",
]


class Reservoir:
    """A uniform sample of at most `cap` values from a stream of batches (Algorithm R, a batch
    at a time), and how many values went by: bounded memory whatever the run's size."""

    def __init__(self, cap: int, rng: np.random.Generator) -> None:
        self.cap, self.rng, self.seen = cap, rng, 0
        self.values = np.empty(0, dtype=np.int64)

    def add(self, v: np.ndarray) -> None:
        if not len(v):
            return
        room = self.cap - len(self.values)
        if room > 0:
            self.values = np.concatenate([self.values, v[:room]])
            self.seen += min(room, len(v))
            v = v[room:]
        if len(v):
            # value i of this batch is the (seen + i + 1)-th: it replaces a random slot with
            # probability cap / (seen + i + 1)
            slots = (self.rng.random(len(v)) * (self.seen + 1 + np.arange(len(v)))).astype(np.int64)
            keep = slots < self.cap
            self.values[slots[keep]] = v[keep]
            self.seen += len(v)

    @property
    def complete(self) -> bool:
        """Whether the sample holds every value (then its statistics are exact)."""
        return self.seen == len(self.values)


def samples(
    results: Results, by: tuple[str, ...], seed: int = 0, cap: int = SAMPLE_CAP
) -> dict[tuple[str, ...], dict[str, Any]]:
    """Per group (projected on `by`): a uniform sample (at most `cap`) of each timing metric's
    per-request values (us), with the count behind it, and the failure count. Read a batch at
    a time: memory stays bounded on runs of millions of requests."""
    rng = np.random.default_rng(seed)
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for batch in results.batches(SAMPLE_COLUMNS):
        cols: dict[str, Any] = {c: batch.column(c) for c in SAMPLE_COLUMNS}
        n = batch.num_rows
        t_us = timings(cols)
        failed = np.asarray(pc.equal(cols["outcome"], "failed").fill_null(False))
        key_cols = _key_columns(cols, by) if by else []
        keys = list(zip(*key_cols, strict=True)) if by else [()] * n
        rows_of: dict[tuple[str, ...], list[int]] = {}
        for i, k in enumerate(keys):
            rows_of.setdefault(k, []).append(i)
        for k, rows in rows_of.items():
            idx = np.array(rows, dtype=np.int64)
            d = out.get(k)
            if d is None:
                d = out[k] = {"count": 0, "failed": 0}
                for m in METRICS:
                    d[m] = Reservoir(cap, rng)
            d["count"] += len(rows)
            d["failed"] += int(failed[idx].sum())
            for m in ("latency", "service", "lag"):
                d[m].add(t_us[m][idx])
            for m in ("ttfb", "ttft", "ttft_text", "tpot"):  # -1: the request has none
                v = t_us[m][idx]
                d[m].add(v[v >= 0])
            d["itl"].add(t_us["itl"][np.isin(t_us["itl_row"], idx)])
    return out


def _key_columns(cols: dict[str, Any], by: tuple[str, ...]) -> list[list[str]]:
    out = []
    for d in by:
        if d == "status":
            st, err = cols["status"].to_pylist(), cols["error_kind"].to_pylist()
            out.append([status_class(s, e) for s, e in zip(st, err, strict=True)])
        elif d == "endpoint":  # grouped by route, as the histograms are
            out.append([route(x or "") for x in cols[d].to_pylist()])
        else:
            out.append([x or "" for x in cols[d].to_pylist()])
    return out
