"""`loadtape inspect`: what is in a capture, computed column-wise in one pass over the parts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import hdr
from .reader import Capture
from .schema import FORMAT_VERSION

PCTS = (50.0, 90.0, 99.0, 100.0)
TOKEN_KINDS = ("prompt", "completion", "reasoning", "cached")
_COLUMNS = [
    "req_start_ns",
    "path",
    "model",
    "stream",
    "status",
    "req_body_size",
    "resp_body_size",
    "prompt_tokens",
    "completion_tokens",
    "error_kind",
    "replayable",
    "api",
    "finish_reason",
    "reasoning_tokens",
    "cached_tokens",
    "resp_start_ns",
    "first_token_us",
    "conversation",
    "think_us",
    "chunk_offsets_us",
]


@dataclass
class Summary:
    path: str
    capture_id: str | None
    format_version: int
    rows: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    per_second: Counter[int] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    error_kinds: Counter[str] = field(default_factory=Counter)
    apis: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)  # by kind: prompt, completion, ...
    turns: Counter[str] = field(default_factory=Counter)  # conversation -> requests
    streamed: int = 0
    not_replayable: int = 0
    parts: int = 0
    notes: list[str] = field(default_factory=list)
    hists: dict[str, Any] = field(default_factory=dict)
    maxima: dict[str, int] = field(default_factory=dict)  # exact p100 (HDR rounds to 3 digits)

    def _conversations(self) -> dict[str, Any] | None:
        if not self.turns:
            return None
        counts = sorted(self.turns.values())
        return {
            "count": len(counts),
            "multi_turn": sum(1 for c in counts if c > 1),
            "turns_p50": counts[len(counts) // 2],
            "turns_max": counts[-1],
        }

    def to_json(self) -> dict[str, Any]:
        span_s = (self.last_ns - self.first_ns) / 1e9 if self.first_ns and self.last_ns else 0.0
        return {
            "path": self.path,
            "capture_id": self.capture_id,
            "format_version": self.format_version,
            "rows": self.rows,
            "first_request_ns": self.first_ns,
            "last_request_ns": self.last_ns,
            "span_s": round(span_s, 6),
            "mean_rate_per_s": round(self.rows / span_s, 3) if span_s > 0 else None,
            "peak_rate_per_s": max(self.per_second.values()) if self.per_second else 0,
            "streamed_share": round(self.streamed / self.rows, 4) if self.rows else 0.0,
            "not_replayable": self.not_replayable,
            "top_paths": self.paths.most_common(10),
            "top_models": self.models.most_common(10),
            "status_mix": dict(sorted(self.statuses.items())),
            "error_kinds": dict(self.error_kinds.most_common()),
            "apis": dict(self.apis.most_common()),
            "finish_reasons": dict(self.finish_reasons.most_common()),
            "tokens": {k: self.tokens[k] for k in TOKEN_KINDS if self.tokens[k]},
            "conversations": self._conversations(),
            "percentiles": {
                name: {
                    f"p{p:g}": self.maxima[name] if p == 100 else min(v, self.maxima[name])
                    for p, v in hdr.percentiles(h, PCTS).items()
                }
                for name, h in self.hists.items()
                if h.total_count
            },
            "parts": self.parts,
            "recovery_notes": self.notes,
        }


def _counter_add(counter: Counter[str], arr: pa.Array, null_label: str | None = None) -> None:
    vc = pc.value_counts(arr)
    for item in vc.to_pylist():
        value = item["values"]
        if value is None:
            if null_label is None:
                continue
            value = null_label
        counter[str(value)] += item["counts"]


def summarize(cap: Capture) -> Summary:
    s = Summary(
        str(cap.path),
        cap.capture_id,
        cap.manifest.format_version if cap.manifest else FORMAT_VERSION,
        parts=len(cap.parts),
        notes=list(cap.notes),
    )
    s.hists = {
        "req_body_bytes": hdr.new_hist(1 << 40),
        "resp_body_bytes": hdr.new_hist(1 << 40),
        "prompt_tokens": hdr.new_hist(1 << 31),
        "completion_tokens": hdr.new_hist(1 << 31),
        "ttft_ms": hdr.new_hist(1 << 31),
        "think_ms": hdr.new_hist(1 << 31),
        # a stream's timing between body chunks as the proxy read them (a chunk can hold
        # several token events; replay measures the events themselves)
        "chunk_gap_us": hdr.new_hist(1 << 40),
        "chunks_per_stream": hdr.new_hist(1 << 31),
    }
    sources = {
        "req_body_bytes": "req_body_size",
        "resp_body_bytes": "resp_body_size",
        "prompt_tokens": "prompt_tokens",
        "completion_tokens": "completion_tokens",
    }
    for batch in cap.batches(_COLUMNS):
        n = batch.num_rows
        if not n:
            continue
        s.rows += n
        starts = batch["req_start_ns"]
        lo, hi = pc.min(starts).as_py(), pc.max(starts).as_py()
        s.first_ns = lo if s.first_ns is None else min(s.first_ns, lo)
        s.last_ns = hi if s.last_ns is None else max(s.last_ns, hi)
        secs = starts.to_numpy() // 1_000_000_000
        uniq, counts = np.unique(secs, return_counts=True)
        for sec, c in zip(uniq.tolist(), counts.tolist(), strict=True):
            s.per_second[sec] += c
        _counter_add(s.paths, batch["path"])
        _counter_add(s.models, batch["model"])
        _counter_add(s.statuses, batch["status"], null_label="no response")
        _counter_add(s.error_kinds, batch["error_kind"])
        _counter_add(s.apis, batch["api"])
        _counter_add(s.finish_reasons, batch["finish_reason"])
        for kind in TOKEN_KINDS:
            s.tokens[kind] += pc.sum(batch[f"{kind}_tokens"]).as_py() or 0
        # a stream's recorded TTFT: to the response's start, then to the first output chunk
        ttft = pc.add(
            pc.divide(pc.subtract(batch["resp_start_ns"], batch["req_start_ns"]), 1_000_000),
            pc.divide(batch["first_token_us"], 1000),
        )
        _counter_add(s.turns, batch["conversation"])
        think = pc.drop_null(pc.divide(batch["think_us"], 1000)).to_numpy(zero_copy_only=False)
        hdr.record_many(s.hists["think_ms"], think.astype("int64"))
        if len(think):
            s.maxima["think_ms"] = max(s.maxima.get("think_ms", 0), int(think.max()))
        vals = pc.drop_null(ttft).to_numpy(zero_copy_only=False)
        hdr.record_many(s.hists["ttft_ms"], vals.astype("int64"))
        if len(vals):
            s.maxima["ttft_ms"] = max(s.maxima.get("ttft_ms", 0), int(vals.max()))
        _chunk_timing(s, batch)
        s.streamed += pc.sum(pc.cast(pc.fill_null(batch["stream"], False), pa.int64())).as_py() or 0
        s.not_replayable += n - (pc.sum(pc.cast(batch["replayable"], pa.int64())).as_py() or 0)
        for name, col in sources.items():
            vals = pc.drop_null(batch[col]).to_numpy(zero_copy_only=False)
            hdr.record_many(s.hists[name], vals)
            if len(vals):
                s.maxima[name] = max(s.maxima.get(name, 0), int(vals.max()))
    return s


def _chunk_timing(s: Summary, batch: pa.RecordBatch) -> None:
    """Gaps between a streamed response's chunks (within each response, never across two),
    and chunks per stream."""
    streamed = pc.fill_null(batch["stream"], False)
    lists = pc.filter(batch["chunk_offsets_us"], streamed)
    lists = pc.drop_null(lists)
    if not len(lists):
        return
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    for name, vals in (("chunks_per_stream", lengths),):
        hdr.record_many(s.hists[name], vals)
        s.maxima[name] = max(s.maxima.get(name, 0), int(vals.max()))
    flat = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    if len(flat) < 2:
        return
    gaps = np.diff(flat)
    starts = np.cumsum(lengths)[:-1] - 1  # a gap from one response's last chunk to the next's
    keep = np.ones(len(gaps), dtype=bool)
    keep[starts[(starts >= 0) & (starts < len(gaps))]] = False
    gaps = gaps[keep & (gaps >= 0)]
    if len(gaps):
        hdr.record_many(s.hists["chunk_gap_us"], gaps)
        s.maxima["chunk_gap_us"] = max(s.maxima.get("chunk_gap_us", 0), int(gaps.max()))


def render_text(s: Summary) -> str:
    j = s.to_json()
    lines = [
        f"capture      {j['path']}  (id {j['capture_id']}, "
        f"format v{j['format_version']}, {j['parts']} part(s))",
        f"requests     {j['rows']}",
    ]
    if j["rows"]:
        lines += [
            f"time span    {j['span_s']:.3f} s",
            f"rate         mean {j['mean_rate_per_s'] or 0:.2f}/s, "
            f"peak {j['peak_rate_per_s']}/s (1 s bins)",
            f"streamed     {j['streamed_share'] * 100:.1f} %",
            "status mix   " + ", ".join(f"{k}: {v}" for k, v in j["status_mix"].items()),
            "top paths    " + ", ".join(f"{k} ({v})" for k, v in j["top_paths"][:5]),
        ]
        if j["top_models"]:
            lines.append("top models   " + ", ".join(f"{k} ({v})" for k, v in j["top_models"][:5]))
        if j["apis"]:
            lines.append("API surfaces " + ", ".join(f"{k} ({v})" for k, v in j["apis"].items()))
        if j["finish_reasons"]:
            lines.append(
                "finish       " + ", ".join(f"{k}: {v}" for k, v in j["finish_reasons"].items())
            )
        if j["tokens"]:
            lines.append("tokens       " + ", ".join(f"{k} {v}" for k, v in j["tokens"].items()))
        conv = j["conversations"]
        if conv:
            lines.append(
                f"conversations {conv['count']} ({conv['multi_turn']} multi-turn; turns p50 "
                f"{conv['turns_p50']}, max {conv['turns_max']})"
            )
        if j["error_kinds"]:
            lines.append(
                "errors       " + ", ".join(f"{k}: {v}" for k, v in j["error_kinds"].items())
            )
        if j["not_replayable"]:
            lines.append(f"not replayable {j['not_replayable']}")
        for name, ps in j["percentiles"].items():
            lines.append(f"{name:<18}" + "  ".join(f"{k} {v}" for k, v in ps.items()))
    if j["recovery_notes"]:
        lines.append("journal recovery:")
        lines += [f"  {n}" for n in j["recovery_notes"]]
    return "\n".join(lines)
