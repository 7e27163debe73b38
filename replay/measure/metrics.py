"""Metrics: HdrHistograms (1 us to 1 h, 3 significant digits) per group, recorded in batches.

Metrics, in microseconds:

| name | from | to |
|---|---|---|
| latency | intended send time | response end (coordinated-omission-free) |
| service | actual send | response end |
| ttfb | actual send | response headers |
| ttft | actual send | first output event of any kind (text, reasoning, tool call) |
| ttft_text | actual send | first visible text (after ttft when reasoning or a tool call leads) |
| itl | one output event | the next (one value per gap, over every kind) |
| tpot | first token | response end, divided by output tokens - 1 |
| lag | intended send time | actual send (schedule lag) |

Groups are (stream, target, api, endpoint, model, status class); target is the target's name
when a run has several (`--target NAME=URL`), else ""; api is the API surface (chat, responses,
messages, ...). Each group also sums tokens by kind (prompt, completion, reasoning, cached) and
counts finish reasons. Values out of the histogram's range are counted
per metric, never silently dropped. Per-second interval histograms of latency and TTFT (per
stream, or `stream@target` with several targets) give the over-time views; only the current
second's are live, finished ones are kept encoded. Histograms merge exactly (`add`), so shards,
workers and copies each record their own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgpack
import numpy as np
from hdrh.histogram import HdrHistogram

from captures import hdr

from .groups import GroupStats, route, series_name, status_class
from .timings import ints, timing_steps

METRICS = ("latency", "service", "ttfb", "ttft", "ttft_text", "itl", "tpot", "lag")
INTERVAL_METRICS = ("latency", "ttft", "itl")
# per stream and second: [ok, expected, failed] by completion second, then [scheduled, sent]
# by intended and by actual send second (in flight at a second's end is sent - done so far)
PER_SECOND = ("ok", "expected", "failed", "scheduled", "sent")
GroupKey = tuple[str, str, str, str, str, str]  # stream, target, api, endpoint, model, status
GROUP_DIMS = ("stream", "target", "api", "endpoint", "model", "status")
HIST_FORMAT = 3  # 1: keys without target and api; 2: without api (read as "")
_OUTCOME = {"ok": 0, "expected": 1, "failed": 2}
_BIG = np.iinfo(np.int64).max
GROUP_STEP_ROWS = 128  # rows given their group per step (a Python pass, ~0.5 us a row)


class Metrics:
    def __init__(self, run_start_ns: int = 0) -> None:
        self.run_start_ns = run_start_ns  # epoch ns; interval buckets are seconds from here
        self.hists: dict[GroupKey, dict[str, HdrHistogram]] = {}
        self.stats: dict[GroupKey, GroupStats] = {}
        self.out_of_range: dict[str, int] = defaultdict(int)
        # per stream: second -> metric -> encoded histogram (finished seconds)
        self.intervals: dict[str, dict[int, dict[str, bytes]]] = defaultdict(dict)
        self._live: dict[tuple[str, int], dict[str, HdrHistogram]] = {}
        # per stream, per second: PER_SECOND counts
        self.per_second: dict[str, dict[int, list[int]]] = defaultdict(dict)
        # all groups together, kept live for the progress line (cheap to read)
        self.overall = {"latency": hdr.new_latency_hist(), "lag": hdr.new_latency_hist()}

    def group(self, key: GroupKey) -> dict[str, HdrHistogram]:
        h = self.hists.get(key)
        if h is None:
            h = self.hists[key] = {m: hdr.new_latency_hist() for m in METRICS}
            self.stats[key] = GroupStats()
        return h

    def _record(self, hists: dict[str, HdrHistogram], metric: str, values: np.ndarray) -> None:
        if values.size:
            bad = hdr.record_many(hists[metric], values)
            if bad:
                self.out_of_range[metric] += bad

    def record_batch(self, b: dict[str, Any]) -> None:
        """Record a batch of results (column lists, epoch ns; see writer.ResultWriter)."""
        for _ in self.record_steps(b):
            pass

    def record_steps(
        self, b: dict[str, Any], numbers: Mapping[str, Any] | None = None
    ) -> Iterator[None]:
        """record_batch in steps (it yields between them): the open loop records in the event
        loop's idle time, a step at a time, and a long step would be schedule lag. `numbers`:
        the numeric columns as Arrow arrays (read without a Python int per value)."""
        n = len(b["end_ns"])
        if not n:
            return
        nb = {**b, **numbers} if numbers else b
        zeros = [0] * n
        outcome = np.array([_OUTCOME[o] for o in b["outcome"]], dtype=np.int64)
        yield
        status = ints(nb["status"])
        ctoks = ints(nb["completion_tokens"])
        yield
        ptoks = ints(nb["prompt_tokens"])
        rtoks = ints(nb.get("reasoning_tokens") or zeros)
        cached = ints(nb.get("cached_tokens") or zeros)
        yield
        bytes_in = ints(nb["bytes_in"])
        intended = ints(nb["intended_ns"])
        end = ints(nb["end_ns"])
        sent = ints(nb["sent_ns"])
        yield
        # group index per row, GROUP_STEP_ROWS rows a step
        gid_of: dict[GroupKey, int] = {}
        gids = np.empty(n, dtype=np.int64)
        models = [m or "" for m in b["model"]]
        targets = b.get("target") or [""] * n
        apis = [a or "" for a in b.get("api") or [""] * n]
        keys = zip(
            b["stream"],
            targets,
            apis,
            map(route, b["endpoint"]),
            models,
            map(status_class, b["status"], b["error_kind"]),
            strict=True,
        )
        for i, key in enumerate(keys):
            g = gid_of.get(key)
            if g is None:
                g = gid_of[key] = len(gid_of)
            gids[i] = g
            if i % GROUP_STEP_ROWS == GROUP_STEP_ROWS - 1:
                yield
        ng = len(gid_of)
        yield
        t: dict[str, np.ndarray] = {}
        yield from timing_steps(nb, t)
        yield
        latency, service, lag = t["latency"], t["service"], t["lag"]
        ttfb, ttft, tpot, ttft_text = t["ttfb"], t["ttft"], t["tpot"], t["ttft_text"]
        itl, itl_owner = t["itl"], gids[t["itl_row"]]
        yield

        hdr.record_many(self.overall["latency"], latency)
        yield
        hdr.record_many(self.overall["lag"], lag)
        yield
        counts = np.bincount(gids * 3 + outcome, minlength=ng * 3).reshape(ng, 3)
        ctok_sum = np.bincount(gids, weights=ctoks, minlength=ng)
        ptok_sum = np.bincount(gids, weights=ptoks, minlength=ng)
        yield
        rtok_sum = np.bincount(gids, weights=rtoks, minlength=ng)
        cached_sum = np.bincount(gids, weights=cached, minlength=ng)
        bytes_sum = np.bincount(gids, weights=bytes_in, minlength=ng)
        yield
        # each group's span and statuses, for all groups in a few passes (not a few per group)
        spans = []
        for at, pick, init in (
            (intended, np.minimum, _BIG),
            (intended, np.maximum, -_BIG),
            (end, np.minimum, _BIG),
            (end, np.maximum, -_BIG),
        ):
            acc = np.full(ng, init, dtype=np.int64)
            pick.at(acc, gids, at)
            spans.append(acc.tolist())
            yield
        pairs, pair_counts = np.unique((gids << 16) | (status & 0xFFFF), return_counts=True)
        statuses: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for pair, c in zip(pairs.tolist(), pair_counts.tolist(), strict=True):
            if pair & 0xFFFF:
                statuses[pair >> 16].append((pair & 0xFFFF, c))
        sums = [x.tolist() for x in (ctok_sum, ptok_sum, rtok_sum, cached_sum, bytes_sum)]
        group_counts = counts.tolist()
        yield
        for key, g in gid_of.items():
            sel = gids == g
            hists = self.group(key)
            self._record(hists, "latency", latency[sel])
            self._record(hists, "service", service[sel])
            self._record(hists, "lag", lag[sel])
            yield
            v = ttfb[sel]
            self._record(hists, "ttfb", v[v >= 0])
            v = ttft[sel]
            self._record(hists, "ttft", v[v >= 0])
            yield
            v = ttft_text[sel]
            self._record(hists, "ttft_text", v[v >= 0])
            v = tpot[sel]
            self._record(hists, "tpot", v[v >= 0])
            self._record(hists, "itl", itl[itl_owner == g])
            yield
            st = self.stats[key]
            c_ok, c_exp, c_fail = group_counts[g]
            st.count += c_ok + c_exp + c_fail
            st.ok += c_ok
            st.expected += c_exp
            st.failed += c_fail
            st.completion_tokens += int(sums[0][g])
            st.prompt_tokens += int(sums[1][g])
            st.reasoning_tokens += int(sums[2][g])
            st.cached_tokens += int(sums[3][g])
            st.bytes_in += int(sums[4][g])
            for sv, c in statuses.get(g, ()):
                st.statuses[sv] = st.statuses.get(sv, 0) + c
            st.widen(spans[0][g], spans[1][g], spans[2][g], spans[3][g])
            yield
        keys_of = {g: k for k, g in gid_of.items()}
        for i, fin in enumerate(b.get("finish_reason") or ()):
            if fin:
                fr = self.stats[keys_of[int(gids[i])]].finish_reasons
                fr[fin] = fr.get(fin, 0) + 1
        yield
        for i in np.flatnonzero(outcome == 2).tolist():  # failures: usually few
            key = keys_of[int(gids[i])]
            kind = b["error_kind"][i] or f"http_{b['status'][i]}"
            errs = self.stats[key].errors
            errs[kind] = errs.get(kind, 0) + 1
        series = (
            [series_name(s, t) for s, t in zip(b["stream"], targets, strict=True)]
            if any(t and "://" not in t for t in targets)
            else b["stream"]
        )
        yield
        yield from self._interval_steps(
            series, latency, ttft, outcome, end, (intended, sent), (itl, t["itl_row"])
        )

    def _interval_steps(
        self,
        streams: list[str],
        latency: np.ndarray,
        ttft: np.ndarray,
        outcome: np.ndarray,
        end: np.ndarray,
        starts: tuple[np.ndarray, np.ndarray],
        itl: tuple[np.ndarray, np.ndarray],
    ) -> Iterator[None]:
        secs = (end - self.run_start_ns) // 1_000_000_000
        sid_of: dict[str, int] = {}
        sids = np.fromiter(
            (sid_of.setdefault(s, len(sid_of)) for s in streams), dtype=np.int64, count=len(streams)
        )
        combo = sids * (1 << 32) + (secs - int(secs.min()))
        yield
        for c in np.unique(combo).tolist():
            sel = combo == c
            stream = streams[int(np.flatnonzero(sel)[0])]
            sec = int(secs[sel][0])
            ps = self.per_second[stream].setdefault(sec, [0] * len(PER_SECOND))
            oc = np.bincount(outcome[sel], minlength=3)
            for j in range(3):
                ps[j] += int(oc[j])
            yield
            live = self._live.get((stream, sec))
            if live is None:  # a new second: its histograms (~0.1 ms each to make)
                live = {}
                for m in INTERVAL_METRICS:
                    live[m] = hdr.new_latency_hist()
                    yield
                self._live[(stream, sec)] = live
            hdr.record_many(live["latency"], np.maximum(latency[sel], 0))
            yield
            t = ttft[sel]
            hdr.record_many(live["ttft"], t[t >= 0])
            gaps, rows = itl
            if len(gaps):
                hdr.record_many(live["itl"], gaps[sel[rows]])
            yield
        for j, at in ((3, starts[0]), (4, starts[1])):  # scheduled and sent, by their second
            at_secs = (at - self.run_start_ns) // 1_000_000_000
            for sid in np.unique(sids).tolist():
                mine = sids == sid
                stream = next(s for s, i in sid_of.items() if i == sid)
                vals, cnts = np.unique(at_secs[mine], return_counts=True)
                for sec, c in zip(vals.tolist(), cnts.tolist(), strict=True):
                    self.per_second[stream].setdefault(sec, [0] * len(PER_SECOND))[j] += c
            yield

    def seal_intervals(self, before_sec: int | None = None) -> None:
        """Encode and free the live interval histograms of seconds < before_sec (all if None)."""
        for _ in self.seal_steps(before_sec):
            pass

    def seal_steps(self, before_sec: int | None = None) -> Iterator[None]:
        """seal_intervals a histogram at a time (each encoding is about a millisecond)."""
        for key in [k for k in self._live if before_sec is None or k[1] < before_sec]:
            stream, sec = key
            live = self._live[key]
            sealed = self.intervals[stream].setdefault(sec, {})
            for m, h in live.items():
                if m in sealed:  # rows came in after the second was sealed: theirs join it
                    hdr.add(h, hdr.decode(sealed[m]))
                sealed[m] = hdr.encode(h)
                yield
            del self._live[key]

    # -- merged views --------------------------------------------------------------------------
    def merged(self, keys: Iterable[GroupKey]) -> tuple[dict[str, HdrHistogram], GroupStats]:
        out = {m: hdr.new_latency_hist() for m in METRICS}
        st = GroupStats()
        for k in keys:
            for m in METRICS:
                out[m].add(self.hists[k][m])
            st.merge(self.stats[k])
        return out, st

    def total(self) -> tuple[dict[str, HdrHistogram], GroupStats]:
        return self.merged(list(self.hists))

    # -- encoding ------------------------------------------------------------------------------
    def encode(self) -> bytes:
        self.seal_intervals()
        doc = {
            "format": HIST_FORMAT,
            "run_start_ns": self.run_start_ns,
            "groups": [
                {
                    "key": list(k),
                    "hists": {m: hdr.encode(h) for m, h in hs.items()},
                    "stats": self.stats[k].__dict__,
                }
                for k, hs in self.hists.items()
            ],
            "out_of_range": dict(self.out_of_range),
            "intervals": {
                s: {str(sec): v for sec, v in d.items()} for s, d in self.intervals.items()
            },
            "per_second": {
                s: {str(sec): v for sec, v in d.items()} for s, d in self.per_second.items()
            },
        }
        out: bytes = msgpack.packb(doc, use_bin_type=True)
        return out

    @classmethod
    def decode(cls, data: bytes) -> Metrics:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(doc, dict) or doc.get("format") not in (1, HIST_FORMAT):
            raise ValueError("not a loadtape histogram file (or a newer format)")
        m = cls(int(doc["run_start_ns"]))
        for g in doc["groups"]:
            k = list(g["key"])
            if len(k) == 4:  # format 1: no target
                k.insert(1, "")
            if len(k) == 5:  # format 2: no api
                k.insert(2, "")
            key: GroupKey = (k[0], k[1], k[2], k[3], k[4], k[5])
            hists = {name: hdr.decode(blob) for name, blob in g["hists"].items()}
            for name in METRICS:  # a metric added since the file was written: empty
                hists.setdefault(name, hdr.new_latency_hist())
            m.hists[key] = hists
            st = GroupStats(
                **{
                    k: v
                    for k, v in g["stats"].items()
                    if k not in ("errors", "statuses", "finish_reasons")
                }
            )
            st.errors = dict(g["stats"]["errors"])
            st.finish_reasons = dict(g["stats"].get("finish_reasons") or {})
            st.statuses = {int(k): v for k, v in g["stats"]["statuses"].items()}
            m.stats[key] = st
        m.out_of_range.update(doc.get("out_of_range", {}))
        for s, d in doc.get("intervals", {}).items():
            m.intervals[s] = {int(sec): v for sec, v in d.items()}
        for s, d in doc.get("per_second", {}).items():
            m.per_second[s] = {  # files before [scheduled, sent]: zeros there
                int(sec): [*v, *[0] * (len(PER_SECOND) - len(v))] for sec, v in d.items()
            }
        return m

    def add(self, other: Metrics) -> None:
        """Merge another run's (or shard's) metrics into this one, exactly."""
        for k, hs in other.hists.items():
            mine = self.group(k)
            for name, h in hs.items():
                mine[name].add(h)
            self.stats[k].merge(other.stats[k])
        for name, v in other.out_of_range.items():
            self.out_of_range[name] += v
        other.seal_intervals()
        self.seal_intervals()
        for s, d in other.intervals.items():
            for sec, blobs in d.items():
                mine_i = self.intervals[s].get(sec)
                if mine_i is None:
                    self.intervals[s][sec] = dict(blobs)
                else:
                    for name, blob in blobs.items():
                        h = hdr.decode(mine_i[name])
                        h.decode_and_add(blob)
                        mine_i[name] = hdr.encode(h)
        for s, counts in other.per_second.items():
            for sec, row in counts.items():
                cur = self.per_second[s].setdefault(sec, [0] * len(PER_SECOND))
                for i, v in enumerate(row):
                    cur[i] += v
