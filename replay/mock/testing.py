"""Results directories made without traffic, for report, SLO and compare tests (and golden files).

`make_results` writes what a run writes (results.parquet, histograms.msgpack, run.json) from
seeded draws: the same arguments give byte-identical reports. Latency shapes are lognormal
around a per-model median, streamed requests get token events, a share of requests fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from captures.schema import LOADTAPE_VERSION
from replay.measure.metrics import Metrics
from replay.measure.results import COLUMNS, SCHEMA, with_derived
from replay.measure.resultsdir import write_histograms, write_run_json

T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
MS = 1_000_000


@dataclass(frozen=True)
class Shape:
    """One stream's traffic in a made-up run."""

    stream: str = "replay"
    target: str = ""
    rate: float = 20.0  # requests per second
    models: Sequence[tuple[str, float]] = (("small", 40.0), ("large", 120.0))  # model, TTFT ms
    endpoint: str = "/v1/chat/completions"
    tokens: int = 16  # completion tokens per streamed request
    itl_ms: float = 5.0
    error_share: float = 0.0  # share of requests failed (half connect errors, half HTTP 500)
    shed_share: float = 0.0  # share answered 503 (expected shedding with --expect-status 503)
    stream_share: float = 0.5  # share of requests streamed (the rest: plain JSON)


def make_results(
    out: str | Path,
    *,
    n: int = 200,
    shapes: Sequence[Shape] = (Shape(),),
    seed: int = 0,
    slowdown: float = 1.0,
    start_ns: int = T0_NS,
) -> Path:
    """Write a results directory of n requests per shape; every delay times `slowdown`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    seq = 0
    last_end = start_ns
    for shape in shapes:
        gaps = rng.exponential(1e9 / shape.rate, n).astype(np.int64)
        intended = start_ns + np.cumsum(gaps) - gaps[0]
        lag = (rng.exponential(0.2, n) * MS).astype(np.int64)
        which = rng.integers(0, len(shape.models), n)
        streamed = rng.random(n) < shape.stream_share
        fate = rng.random(n)
        jitter = rng.lognormal(0.0, 0.35, n)
        for i in range(n):
            model, ttft_ms = shape.models[int(which[i])]
            sent = int(intended[i] + lag[i])
            ttft = int(ttft_ms * jitter[i] * slowdown * MS)
            headers = sent + ttft // 2
            fail = fate[i] < shape.error_share
            shed = not fail and fate[i] < shape.error_share + shape.shed_share
            row: dict[str, Any] = dict.fromkeys(COLUMNS)
            row.update(
                seq=seq,
                stream=shape.stream,
                target=shape.target,
                copy=0,
                loop=0,
                method="POST",
                endpoint=shape.endpoint,
                model=model,
                req_bytes=200,
                intended_ns=int(intended[i]),
                sent_ns=sent,
            )
            if fail and i % 2 == 0:
                row.update(
                    end_ns=sent + 2 * MS,
                    outcome="failed",
                    error_kind="connect",
                    error_message="connection refused",
                    bytes_in=0,
                )
            elif fail or shed:
                row.update(
                    headers_ns=headers,
                    end_ns=headers + MS,
                    bytes_in=40,
                    status=503 if shed else 500,
                    outcome="expected" if shed else "failed",
                )
            elif streamed[i]:
                gaps_us = rng.gamma(4.0, shape.itl_ms * slowdown * 250, shape.tokens - 1)
                offs = np.concatenate([[ttft // 1000], ttft // 1000 + np.cumsum(gaps_us)])
                offs = offs.astype(np.int64)
                row.update(
                    headers_ns=headers,
                    first_token_ns=sent + int(offs[0]) * 1000,
                    end_ns=sent + int(offs[-1]) * 1000 + MS,
                    status=200,
                    outcome="ok",
                    bytes_in=120 * shape.tokens,
                    prompt_tokens=50,
                    completion_tokens=shape.tokens,
                    finish_reason="stop",
                    events=shape.tokens + 2,
                    token_offsets_us=offs.tolist(),
                )
            else:
                end = sent + int(ttft + shape.tokens * shape.itl_ms * slowdown * MS)
                row.update(
                    headers_ns=end - MS // 2,
                    end_ns=end,
                    status=200,
                    outcome="ok",
                    bytes_in=600,
                    prompt_tokens=50,
                    completion_tokens=shape.tokens,
                    finish_reason="stop",
                )
            for c in COLUMNS:
                cols[c].append(row[c])
            last_end = max(last_end, row["end_ns"])
            seq += 1
    metrics = Metrics(run_start_ns=start_ns)
    metrics.record_batch(cols)
    table = with_derived(pa.Table.from_pydict(cols, schema=SCHEMA))
    pq.write_table(table, out / "results.parquet", write_page_checksum=True)
    write_histograms(out, metrics)
    counts = {k: sum(1 for o in cols["outcome"] if o == k) for k in ("ok", "expected", "failed")}
    duration_s = (last_end - start_ns) / 1e9
    sent = len(cols["seq"])
    streams = {s.stream + (f"@{s.target}" if s.target else ""): {"kind": "replay"} for s in shapes}
    write_run_json(
        out,
        {
            "loadtape_version": LOADTAPE_VERSION,
            "start_ns": start_ns,
            "start": "2026-01-01T00:00:00+0000",
            "duration_s": round(duration_s, 6),
            "mode": "open",
            "streams": streams,
            "target": "http://127.0.0.1:8000" if not any(s.target for s in shapes) else None,
            "targets": {
                s.target: f"http://127.0.0.1:{8000 + i}" for i, s in enumerate(shapes) if s.target
            },
            "counts": {"planned": sent, "sent": sent, **counts, "unsent": {}, "skipped": {}},
            "scheduled_rate": round(sum(s.rate for s in shapes), 6),
            "achieved_rate": round(sent / duration_s, 6),
            "interrupted": False,
            "options": {"seed": seed, "slowdown": slowdown},
        },
    )
    return out
