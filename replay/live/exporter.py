"""`--metrics-listen HOST:PORT`: the run's figures in Prometheus exposition, served by
prometheus_client while the run goes on.

The results writer hands every batch of result rows to `RunObserver.record` (the same rows
that feed the histograms and results.parquet), which keeps counters and Prometheus bucket
counts by stream, target, endpoint and model under a lock; the live line's progress snapshot
adds what only the dispatcher knows (sent, in flight, send rate, lag). A collector
(families.py) turns a copy of both into metric families at each scrape, so a scrape never
waits on the run and the counters at the end equal the results exactly.

Quantiles: Prometheus histograms for `histogram_quantile` (buckets chosen for LLM latencies),
and beside them the exact p50/p90/p99 of the last `WINDOW_S` seconds from HdrHistograms.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from captures import hdr
from replay.measure.groups import add_counts, route
from replay.measure.timings import timings
from replay.settings import Progress

LABELS = ("stream", "target", "endpoint", "model")
# seconds; LLM requests run from milliseconds (embeddings, a cached answer) to minutes (long
# generations), tokens arrive every few milliseconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
HISTOGRAMS = {  # metric (timings' name) -> buckets
    "latency": LATENCY_BUCKETS,
    "service": LATENCY_BUCKETS,
    "ttft": LATENCY_BUCKETS,
    "itl": TOKEN_BUCKETS,
    "lag": TOKEN_BUCKETS,
}
QUANTILES = (0.5, 0.9, 0.99)
MAX_POINTS = 3600
WINDOW_S = 10
OUTCOMES = ("ok", "expected", "failed")
TOKEN_KINDS = ("prompt", "completion", "reasoning", "cached")


@dataclass
class _Series:
    """One label set's figures."""

    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)  # (outcome, class)
    errors: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KINDS, 0))
    bytes_in: int = 0
    bytes_out: int = 0  # request bytes
    buckets: dict[str, np.ndarray] = field(default_factory=dict)  # per metric, +Inf last
    sums: dict[str, float] = field(default_factory=dict)  # seconds


def _status_class(status: int | None, error: str | None) -> str:
    if error is not None or status is None:
        return "error"
    return f"{status // 100}xx"


class RunObserver:
    """Fed by the results writer (record) and the progress tick (progress); read by scrapes."""

    def __init__(self, stage: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _Series] = {}
        self._progress: Progress | None = None
        self._windows: dict[str, collections.deque[tuple[int, dict[str, Any]]]] = {}
        self._sparse: dict[tuple[str, int], dict[str, hdr.Sparse]] = {}  # shard_state's past
        self.stage = dict(stage or {})  # e.g. the sweep level
        # a sweep's earlier levels: the counters go on from where the last level left them
        self._before: Progress | None = None
        self.finished = False
        self.report: str | None = None  # the final report's path, once written
        # one point per progress tick, for the live page (bounded: a long run thins it)
        self.history: list[dict[str, Any]] = []

    # -- feeding --------------------------------------------------------------------------------
    def record(self, b: Mapping[str, Any]) -> None:
        """One batch of result rows (column lists), counted in whole-array passes: this runs
        as a step of the results work beside the histograms, and its cost is the run's."""
        n = len(b["end_ns"])
        if not n:
            return
        t = timings(b)
        index: dict[tuple[Any, ...], int] = {}
        labels = zip(*(_label(b, k) for k in LABELS), strict=True)
        rows = np.fromiter(
            (index.setdefault(k, len(index)) for k in labels),
            np.int64,
            count=n,
        )
        nk = len(index)
        classes = [_status_class(st, e) for st, e in zip(b["status"], b["error_kind"], strict=True)]
        outcomes = collections.Counter(zip(rows.tolist(), b["outcome"], classes, strict=True))
        tokens = {
            kind: np.bincount(rows, weights=[v or 0 for v in b[f"{kind}_tokens"]], minlength=nk)
            for kind in TOKEN_KINDS
        }
        bytes_in = np.bincount(rows, weights=[v or 0 for v in b["bytes_in"]], minlength=nk)
        bytes_out = np.bincount(rows, weights=[v or 0 for v in b["req_bytes"]], minlength=nk)
        owners = {"itl": rows[t["itl_row"]] if len(t["itl"]) else np.empty(0, np.int64)}
        binned = {}
        for m, bounds in HISTOGRAMS.items():
            vals, who = t[m], owners.get(m, rows)
            keep = vals >= 0
            secs, who = vals[keep] / 1e6, who[keep]  # us -> s
            nb = len(bounds) + 1
            slot = who * nb + np.searchsorted(bounds, secs, side="left")
            counts = np.bincount(slot, minlength=nk * nb).reshape(nk, nb)
            binned[m] = (counts, np.bincount(who, weights=secs, minlength=nk))
        failed = [
            (int(rows[j]), b["error_kind"][j] or f"http_{b['status'][j]}")
            for j, o in enumerate(b["outcome"])
            if o == "failed"
        ]
        sec = int(time.monotonic())
        with self._lock:
            series = [
                self._series.setdefault(tuple("" if v is None else str(v) for v in key), _Series())
                for key in index
            ]
            for (i, outcome, cls), c in outcomes.items():
                oc = series[i].outcomes
                oc[(outcome, cls)] = oc.get((outcome, cls), 0) + c
            for i, kind in failed:
                errs = series[i].errors
                errs[kind] = errs.get(kind, 0) + 1
            for i, s in enumerate(series):
                for kind in TOKEN_KINDS:
                    s.tokens[kind] += int(tokens[kind][i])
                s.bytes_in += int(bytes_in[i])
                s.bytes_out += int(bytes_out[i])
                for m, (counts, sums) in binned.items():
                    prev = s.buckets.get(m)
                    s.buckets[m] = counts[i].copy() if prev is None else prev + counts[i]
                    s.sums[m] = s.sums.get(m, 0.0) + float(sums[i])
            stream_of = np.array([key[0] for key in index], dtype=object)[rows]
            for stream in {k[0] for k in index}:
                self._window_add(stream, sec, t, stream_of == stream)

    def _window_add(self, stream: str, sec: int, t: dict[str, np.ndarray], sel: np.ndarray) -> None:
        win = self._windows.setdefault(stream, collections.deque())
        if not win or win[-1][0] != sec:
            win.append((sec, {m: hdr.new_latency_hist() for m in ("latency", "ttft")}))
        while win and win[0][0] <= sec - WINDOW_S:
            win.popleft()
        hists = win[-1][1]
        hdr.record_many(hists["latency"], np.maximum(t["latency"][sel], 0))
        ttft = t["ttft"][sel]
        hdr.record_many(hists["ttft"], ttft[ttft >= 0])

    def next_stage(self, **stage: str) -> None:
        """A sweep's next level: sent, scheduled and elapsed carry on from the last one (they
        are the whole sweep's, as the request counters are), and the stage labels change."""
        with self._lock:
            if self._progress is not None:  # the last level's end, the whole sweep's so far
                self._before = self._progress
            self.stage.update(stage)

    def progress(self, p: Progress) -> None:
        with self._lock:
            quantiles = self._recent()
            b = self._before
        if b is not None:
            p = dataclasses.replace(
                p,
                elapsed_s=b.elapsed_s + p.elapsed_s,
                sent=b.sent + p.sent,
                ok=b.ok + p.ok,
                expected=b.expected + p.expected,
                failed=b.failed + p.failed,
                scheduled=None if p.scheduled is None else (b.scheduled or 0) + p.scheduled,
                sender_wait_s=_plus(b.sender_wait_s, p.sender_wait_s),
                throttled_s=_plus(b.throttled_s, p.throttled_s),
            )
        point: dict[str, Any] = {
            "t": round(p.elapsed_s, 2),
            "sent": p.sent,
            "ok": p.ok,
            "expected": p.expected,
            "failed": p.failed,
            "in_flight": p.in_flight,
            "rate": round(p.rate, 2),
            "lag_p99_ms": p.lag_p99_ms,
            "behind_s": round(p.behind_s, 3),
            "scheduled_rate": None,
        }
        prev = self.history[-1] if self.history else None
        if p.scheduled is not None:  # the plan's rate over the same span as the sent rate
            point["scheduled"] = p.scheduled
            if prev is not None and prev.get("scheduled") is not None and p.elapsed_s > prev["t"]:
                dt = p.elapsed_s - prev["t"]
                point["scheduled_rate"] = round((p.scheduled - prev["scheduled"]) / dt, 2)
        for metric in ("latency", "ttft"):  # the worst stream's recent percentiles
            for q in (50, 99):
                vals = [ps[float(q)] for k, ps in quantiles.items() if k.endswith("\0" + metric)]
                point[f"{metric}_p{q}_ms"] = round(max(vals) / 1000, 3) if vals else None
        with self._lock:
            self._progress = p
            self.history.append(point)
            if len(self.history) > MAX_POINTS:  # keep every other point: the shape, bounded
                self.history = self.history[::2]

    def _recent(self) -> dict[str, Any]:
        """Exact quantiles of the last WINDOW_S seconds per stream and metric (lock held)."""
        now = int(time.monotonic())
        quantiles: dict[str, Any] = {}
        for stream, win in self._windows.items():
            for m in ("latency", "ttft"):
                h = hdr.new_latency_hist()
                for sec, hs in win:
                    if sec > now - WINDOW_S:
                        hdr.add(h, hs[m])
                if h.total_count:
                    quantiles[f"{stream}\0{m}"] = hdr.percentiles(
                        h, tuple(q * 100 for q in QUANTILES)
                    )
        return quantiles

    def live(self) -> dict[str, Any]:
        """What the live page shows: the run so far and where it stands."""
        with self._lock:
            p = self._progress
            return {
                "points": list(self.history),
                "planned": p.planned if p else None,
                "stage": dict(self.stage),
                "finished": self.finished,
                "report": "report" if self.report else None,
            }

    # -- a run on worker processes ---------------------------------------------------------------
    def shard_state(self) -> dict[str, Any]:
        """This (worker's) observer as plain data for the driver: its series, and its recent
        histograms as their filled buckets only (a full counts array is 225 KB)."""
        now = int(time.monotonic())  # rows are recorded into their second: past ones are final
        with self._lock:
            series = self._series_copy()
            cache, self._sparse = self._sparse, {}
            windows: dict[str, list[tuple[int, dict[str, hdr.Sparse]]]] = {}
            for stream, win in self._windows.items():
                out = windows[stream] = []
                for sec, hs in win:
                    sp = cache.get((stream, sec)) or {m: hdr.sparse(h) for m, h in hs.items()}
                    if sec < now:  # final: computed once (this ran on the worker's event loop)
                        self._sparse[(stream, sec)] = sp
                    out.append((sec, sp))
        return {"series": series, "windows": windows}

    def absorb(self, states: list[dict[str, Any]]) -> None:
        """The driver's observer: the whole run is the sum of its workers' latest states."""
        series: dict[tuple[str, ...], _Series] = {}
        windows: dict[str, dict[int, dict[str, Any]]] = {}
        for st in states:
            for key, s in st["series"].items():
                _add_series(series.setdefault(key, _Series()), s)
            for stream, win in st["windows"].items():
                by_sec = windows.setdefault(stream, {})
                for sec, hs in win:
                    mine = by_sec.setdefault(sec, {m: hdr.new_latency_hist() for m in hs})
                    for m, sparse in hs.items():
                        hdr.add_sparse(mine[m], sparse)
        with self._lock:
            self._series = series
            self._windows = {
                stream: collections.deque(sorted(by_sec.items()))
                for stream, by_sec in windows.items()
            }

    # -- reading --------------------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[tuple[str, ...], _Series], Progress | None, dict[str, Any]]:
        with self._lock:
            return self._series_copy(), self._progress, self._recent()

    def _series_copy(self) -> dict[tuple[str, ...], _Series]:
        """(lock held)"""
        series = {}
        for k, s in self._series.items():
            series[k] = copy = _Series()
            _add_series(copy, s)
        return series


def _plus(before: float | None, now: float | None) -> float | None:
    """A counter across a sweep's levels (each level's starts at 0)."""
    return now if before is None else before + (now or 0.0)


def _add_series(into: _Series, s: _Series) -> None:
    """into += s (a copy, when into is a new _Series)."""
    add_counts(into.outcomes, s.outcomes)
    add_counts(into.errors, s.errors)
    add_counts(into.tokens, s.tokens)
    into.bytes_in += s.bytes_in
    into.bytes_out += s.bytes_out
    for m, counts in s.buckets.items():
        prev = into.buckets.get(m)
        into.buckets[m] = counts.copy() if prev is None else prev + counts
    add_counts(into.sums, s.sums)


def _label(b: Mapping[str, Any], name: str) -> Iterable[Any]:
    """A label's values: the endpoint as its route (groups.route), as the report groups it."""
    return map(route, b[name]) if name == "endpoint" else b[name]
