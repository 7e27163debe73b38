"""Results: one row per request, written to Parquet in batches (bounded memory), the histograms
fed from the same batches, and the run's metadata.

A results directory holds `results.parquet` (or `results-<part>.parquet` parts from several
workers), `histograms.msgpack` (encoded HdrHistograms per group, see metrics.py) and `run.json`.
Reports read it back without sending traffic. Injected credentials never appear in it: the request
headers a replay sends are not recorded, only what the results need.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from captures.errors import UserError

from .metrics import Metrics
from .outcome import Outcome
from .plan import Shot
from .rewrite import Prepared

RESULTS_FORMAT = 1

SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("stream", pa.string()),
        ("target", pa.string()),
        ("copy", pa.int32()),
        ("loop", pa.int32()),
        ("session", pa.string()),
        ("source_writer", pa.string()),
        ("source_seq", pa.int64()),
        ("method", pa.string()),
        ("endpoint", pa.string()),
        ("model", pa.string()),
        ("req_bytes", pa.int64()),
        ("intended_ns", pa.int64()),
        ("sent_ns", pa.int64()),
        ("headers_ns", pa.int64()),
        ("first_token_ns", pa.int64()),
        ("end_ns", pa.int64()),
        ("status", pa.int32()),
        ("outcome", pa.string()),  # ok | expected | failed
        ("error_kind", pa.string()),
        ("error_message", pa.string()),
        ("retry_after", pa.string()),
        ("bytes_in", pa.int64()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("events", pa.int32()),
        ("token_offsets_us", pa.list_(pa.int32())),
        ("recorded_status", pa.int32()),
        ("recorded_ttfb_us", pa.int64()),
        ("recorded_first_chunk_us", pa.int64()),
        ("recorded_chunks", pa.int32()),
        ("recorded_completion_tokens", pa.int32()),
        ("recorded_finish_reason", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)


@dataclass(frozen=True)
class Expect:
    """--expect-status: which statuses are expected shedding (not failures). 2xx is success."""

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, spec: str | None) -> Expect:
        codes, classes = set(), set()
        for part in (p.strip().lower() for p in (spec or "").split(",") if p.strip()):
            if re.fullmatch(r"[1-5]xx", part):
                classes.add(int(part[0]))
            elif re.fullmatch(r"[1-5]\d\d", part):
                codes.add(int(part))
            else:
                raise UserError(f"--expect-status: bad status {part!r} (want e.g. 2xx,503,429)")
        classes.discard(2)
        return cls(frozenset(c for c in codes if c // 100 != 2), frozenset(classes))

    def outcome(self, status: int | None, error: str | None) -> str:
        if error is not None or status is None:
            return "failed"
        if 200 <= status < 300:
            return "ok"
        if status in self.codes or status // 100 in self.classes:
            return "expected"
        return "failed"


def _mono_to_epoch() -> int:
    """Offset to add to time.monotonic_ns() to get epoch ns (sampled once per run)."""
    return time.time_ns() - time.monotonic_ns()


class ResultWriter:
    """Collects result rows; `drain()` turns them into Arrow batches and histogram updates in
    small slices, yielding to the event loop between slices (a flush on the loop measured as
    tens of ms of schedule lag); Parquet row groups are written by one background thread, where
    pyarrow's encoding and compression run without the GIL."""

    SLICE_ROWS = 256
    GROUP_ROWS = 4096

    def __init__(
        self,
        out_dir: Path,
        *,
        expect: Expect,
        metrics: Metrics,
        part: str | None = None,
        batch_rows: int = 2048,
        epoch_offset: int | None = None,
    ) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.expect = expect
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.offset = _mono_to_epoch() if epoch_offset is None else epoch_offset
        name = f"results-{part}.parquet" if part else "results.parquet"
        self.path = out_dir / name
        self._writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        self._rows: list[tuple[Shot, Prepared | None, int, Outcome, str, str]] = []
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="loadtape-results")
        self._writes: list[concurrent.futures.Future[None]] = []
        self.rows = 0
        self.ok = 0
        self.expected = 0
        self.failed = 0
        self.closed = False

    def add(
        self,
        shot: Shot,
        prepared: Prepared | None,
        intended_mono: int,
        out: Outcome,
        target: str = "",
    ) -> None:
        """One result: kept as a tuple (the hot path); columns are built when draining."""
        outcome = self.expect.outcome(out.status, out.error)
        if outcome == "ok":
            self.ok += 1
        elif outcome == "expected":
            self.expected += 1
        else:
            self.failed += 1
        self._rows.append((shot, prepared, intended_mono, out, target, outcome))
        self.rows += 1
        if len(self._rows) >= 8 * self.batch_rows:
            self.flush()  # nobody drains (no event loop): keep memory bounded anyway

    def _take(self) -> dict[str, list[Any]] | None:
        rows = self._rows
        if not rows:
            return None
        self._rows = []
        return self._columns(rows)

    def _columns(
        self, rows: list[tuple[Shot, Prepared | None, int, Outcome, str, str]]
    ) -> dict[str, list[Any]]:
        off = self.offset
        shots = [r[0] for r in rows]
        preps = [r[1] for r in rows]
        outs = [r[3] for r in rows]
        recs = [s.recorded for s in shots]
        reqs = [s.request for s in shots]
        nil = [None] * len(rows)
        return {
            "seq": [s.seq for s in shots],
            "stream": [s.stream for s in shots],
            "target": [r[4] for r in rows],
            "copy": [s.copy for s in shots],
            "loop": [s.loop for s in shots],
            "session": [s.session for s in shots],
            "source_writer": [s.source[0] if s.source else None for s in shots],
            "source_seq": [s.source[1] if s.source else None for s in shots],
            "method": [q.method for q in reqs],
            "endpoint": [q.path for q in reqs],
            "model": [
                p.model if p is not None else q.model for p, q in zip(preps, reqs, strict=True)
            ],
            "req_bytes": [len(p.body) if p is not None else 0 for p in preps],
            "intended_ns": [r[2] + off for r in rows],
            "sent_ns": [o.sent_ns + off for o in outs],
            "headers_ns": [o.headers_ns + off if o.headers_ns is not None else None for o in outs],
            "first_token_ns": [
                o.first_token_ns + off if o.first_token_ns is not None else None for o in outs
            ],
            "end_ns": [o.end_ns + off for o in outs],
            "status": [o.status for o in outs],
            "outcome": [r[5] for r in rows],
            "error_kind": [o.error for o in outs],
            "error_message": [o.error_msg for o in outs],
            "retry_after": [o.retry_after for o in outs],
            "bytes_in": [o.bytes_in for o in outs],
            "prompt_tokens": [o.prompt_tokens for o in outs],
            "completion_tokens": [o.completion_tokens for o in outs],
            "finish_reason": [o.finish_reason for o in outs],
            "events": [o.events for o in outs],
            "token_offsets_us": [
                [(t - o.sent_ns) // 1000 for t in o.token_ns] if o.token_ns else None for o in outs
            ],
            "recorded_status": [r.status if r else None for r in recs] if any(recs) else nil,
            "recorded_ttfb_us": [r.ttfb_us if r else None for r in recs] if any(recs) else nil,
            "recorded_first_chunk_us": [r.first_chunk_us if r else None for r in recs]
            if any(recs)
            else nil,
            "recorded_chunks": [r.chunks if r else None for r in recs] if any(recs) else nil,
            "recorded_completion_tokens": [r.completion_tokens if r else None for r in recs]
            if any(recs)
            else nil,
            "recorded_finish_reason": [r.finish_reason if r else None for r in recs]
            if any(recs)
            else nil,
        }

    def _slice(self, cols: dict[str, list[Any]], lo: int, hi: int) -> None:
        part = {k: v[lo:hi] for k, v in cols.items()}
        arrays = [pa.array(part[c], SCHEMA.field(c).type) for c in COLUMNS]
        self._pending.append(pa.RecordBatch.from_arrays(arrays, schema=SCHEMA))
        self._pending_rows += hi - lo
        self.metrics.record_batch(part)

    def _write_pending(self, force: bool = False) -> None:
        if not self._pending or (self._pending_rows < self.GROUP_ROWS and not force):
            return
        table = pa.Table.from_batches(self._pending, schema=SCHEMA)
        self._pending, self._pending_rows = [], 0
        self._writes = [f for f in self._writes if not f.done()]
        if len(self._writes) > 4:  # the disk is slower than the run: wait rather than grow
            self._writes[0].result()
        self._writes.append(self._io.submit(self._writer.write_table, table))

    async def drain(self) -> None:
        """Process what has arrived, in slices, yielding to the event loop between them."""
        cols = self._take()
        if cols is None:
            return
        n = len(cols["seq"])
        for lo in range(0, n, self.SLICE_ROWS):
            self._slice(cols, lo, min(lo + self.SLICE_ROWS, n))
            await asyncio.sleep(0)
        self._write_pending()

    def flush(self) -> None:
        """Process everything now (no event loop needed)."""
        cols = self._take()
        if cols is not None:
            n = len(cols["seq"])
            for lo in range(0, n, self.GROUP_ROWS):
                self._slice(cols, lo, min(lo + self.GROUP_ROWS, n))
        self._write_pending(force=True)

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        for f in self._writes:
            f.result()
        self._io.shutdown(wait=True)
        self._writer.close()
        self.closed = True


def write_histograms(out_dir: Path, metrics: Metrics, part: str | None = None) -> Path:
    path = out_dir / (f"histograms-{part}.msgpack" if part else "histograms.msgpack")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(metrics.encode())
    os.replace(tmp, path)
    return path


def write_run_json(out_dir: Path, doc: dict[str, Any]) -> None:
    doc = {"format": "loadtape-results", "format_version": RESULTS_FORMAT, **doc}
    tmp = out_dir / "run.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    os.replace(tmp, out_dir / "run.json")


@dataclass
class Results:
    """A results directory read back (for reports, comparisons, sweeps)."""

    path: Path
    run: dict[str, Any]
    metrics: Metrics

    @classmethod
    def open(cls, path: str | Path) -> Results:
        p = Path(path)
        run_path = p / "run.json"
        if not p.is_dir():
            raise UserError(f"{p}: no such results directory")
        try:
            run = json.loads(run_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{p}: not a results directory (no run.json)") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{run_path}: unreadable ({exc})") from None
        if not isinstance(run, dict) or run.get("format") != "loadtape-results":
            raise UserError(f"{run_path}: not a loadtape run.json")
        if int(run.get("format_version", 0)) > RESULTS_FORMAT:
            raise UserError(
                f"{run_path}: results format v{run['format_version']} is newer than this "
                "loadtape reads"
            )
        hist_files = sorted(p.glob("histograms*.msgpack"))
        if not hist_files:
            raise UserError(f"{p}: no histograms*.msgpack")
        metrics: Metrics | None = None
        for f in hist_files:
            try:
                m = Metrics.decode(f.read_bytes())
            except Exception as exc:  # corrupt or foreign file: one clear line
                raise UserError(
                    f"{f}: unreadable histograms ({type(exc).__name__}: {exc})"
                ) from None
            if metrics is None:
                metrics = m
            else:
                metrics.add(m)
        assert metrics is not None
        return cls(p, run, metrics)

    def result_files(self) -> list[Path]:
        return sorted(self.path.glob("results*.parquet"))

    def table(self, columns: Iterable[str] | None = None) -> pa.Table:
        cols = list(columns) if columns is not None else None
        tables = []
        for f in self.result_files():
            try:
                tables.append(pq.read_table(f, columns=cols))
            except (OSError, pa.ArrowException) as exc:
                raise UserError(
                    f"{f}: unreadable results ({str(exc).splitlines()[0][:200]})"
                ) from None
        if not tables:
            return SCHEMA.empty_table() if cols is None else SCHEMA.empty_table().select(cols)
        return pa.concat_tables(tables)


def warm_up() -> None:
    """Run one synthetic row through Arrow conversion and the histograms before a run starts,
    so first-call costs (lazy imports, numpy and Arrow code paths) do not land on the first
    shots as schedule lag."""
    row: dict[str, list[Any]] = {c: [None] for c in COLUMNS}
    row.update(
        seq=[0], stream=["warmup"], endpoint=["/"], model=[""], intended_ns=[0], sent_ns=[1],
        end_ns=[2], headers_ns=[1], first_token_ns=[1], status=[200], outcome=["ok"],
        bytes_in=[0], token_offsets_us=[[0, 1]], completion_tokens=[2], prompt_tokens=[1],
    )  # fmt: skip
    pa.RecordBatch.from_arrays(
        [pa.array(row[c], SCHEMA.field(c).type) for c in COLUMNS], schema=SCHEMA
    )
    m = Metrics()
    m.record_batch(row)
    m.seal_intervals()
