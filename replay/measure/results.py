"""Results: one row per request (`SCHEMA`), written to Parquet in batches (bounded memory) by a
results thread, with the histograms fed from the same batches; `Expect` decides which statuses
count as success, expected shedding or failure. Injected credentials never appear in them: the
request headers a replay sends are not recorded, only what the results need. (Reading a results
directory back: resultsdir.py.)
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from captures.errors import UserError
from captures.protocols.canonical import msg_hash
from captures.store import mkdir_private
from replay.plan import Shot
from replay.prefetch import background_priority
from replay.rewrite import Prepared
from replay.send.outcome import Outcome

from .metrics import Metrics

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
        ("api", pa.string()),  # the API surface: chat, completions, responses, messages, ...
        ("endpoint", pa.string()),
        ("model", pa.string()),
        ("req_bytes", pa.int64()),
        ("intended_ns", pa.int64()),
        ("sent_ns", pa.int64()),
        ("headers_ns", pa.int64()),
        ("first_token_ns", pa.int64()),  # the first output event of any kind
        ("first_text_ns", pa.int64()),  # the first visible text
        ("end_ns", pa.int64()),
        ("status", pa.int32()),
        ("outcome", pa.string()),  # ok | expected | failed
        ("error_kind", pa.string()),
        ("error_message", pa.string()),
        ("retry_after", pa.string()),
        ("bytes_in", pa.int64()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("reasoning_tokens", pa.int32()),
        ("cached_tokens", pa.int32()),
        ("cache_write_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("events", pa.int32()),
        ("text_events", pa.int32()),
        ("reasoning_events", pa.int32()),
        ("tool_events", pa.int32()),
        ("stream_complete", pa.bool_()),
        ("response_id", pa.string()),
        ("minted_ids", pa.list_(pa.string())),  # ids the target made: response, tool calls
        ("answer_hash", pa.string()),  # the answer in canonical form (diff: equivalent answers)
        ("token_offsets_us", pa.list_(pa.int32())),
        ("body_hash", pa.string()),  # blake2b-128 hex of the decoded body (loadtape diff)
        ("recorded_status", pa.int32()),
        ("recorded_ttfb_us", pa.int64()),
        ("recorded_first_chunk_us", pa.int64()),
        ("recorded_chunks", pa.int32()),
        ("recorded_completion_tokens", pa.int32()),
        ("recorded_finish_reason", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)

# Written beside the ns integers for a query's sake (DuckDB, polars, pandas): the timing
# metrics in milliseconds, by the same definitions as the histograms (metrics.timings), and
# the instants as UTC timestamps (microseconds: Python's datetime, and so pyarrow's
# to_pylist, stops there; the ns integers keep the rest). Derived when a row group is written;
# not read back by loadtape itself, which keeps to the integers.
UTC_US = pa.timestamp("us", tz="UTC")
DERIVED = pa.schema(
    [
        ("latency_ms", pa.float64()),  # intended send -> end
        ("service_ms", pa.float64()),  # actual send -> end
        ("lag_ms", pa.float64()),  # intended -> actual send
        ("ttfb_ms", pa.float64()),  # send -> response headers
        ("ttft_ms", pa.float64()),  # send -> first output event
        ("ttft_text_ms", pa.float64()),  # send -> first visible text
        ("intended_at", UTC_US),
        ("sent_at", UTC_US),
        ("end_at", UTC_US),
    ]
)
FILE_SCHEMA = pa.schema([*SCHEMA, *DERIVED])


def _instant(ns: pa.ChunkedArray) -> pa.ChunkedArray:
    as_ns = pc.cast(ns, pa.timestamp("ns", tz="UTC"))
    return pc.cast(as_ns, UTC_US, safe=False)  # truncated to the microsecond


def with_derived(table: pa.Table) -> pa.Table:
    """`table` (SCHEMA) with the DERIVED columns appended."""

    def ms(later: str, earlier: str) -> pa.ChunkedArray:
        diff = pc.cast(pc.subtract(table[later], table[earlier]), pa.float64())
        return pc.divide(diff, 1e6)

    derived = {
        "latency_ms": ms("end_ns", "intended_ns"),
        "service_ms": ms("end_ns", "sent_ns"),
        "lag_ms": pc.max_element_wise(ms("sent_ns", "intended_ns"), 0.0),
        "ttfb_ms": ms("headers_ns", "sent_ns"),
        "ttft_ms": ms("first_token_ns", "sent_ns"),
        "ttft_text_ms": ms("first_text_ns", "sent_ns"),
        "intended_at": _instant(table["intended_ns"]),
        "sent_at": _instant(table["sent_ns"]),
        "end_at": _instant(table["end_ns"]),
    }
    for f in DERIVED:
        table = table.append_column(f, derived[f.name].cast(f.type))
    return table


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


class ResultObserver(Protocol):
    """Sees every batch of result rows as the histograms do (the live metrics endpoint)."""

    def record(self, b: Mapping[str, Any]) -> None: ...


def _mono_to_epoch() -> int:
    """Offset to add to time.monotonic_ns() to get epoch ns (sampled once per run)."""
    return time.time_ns() - time.monotonic_ns()


class ResultWriter:
    """Collects result rows on the event loop (one tuple each: the hot path) and hands them to
    a results thread, which builds the Arrow batches, records the histograms, seals the
    per-second intervals and writes Parquet row groups. Doing that work on the loop, even in
    slices, measured as milliseconds of schedule lag every tick; on the thread, the loop waits
    at most the interpreter's switch interval for the GIL (the engine shortens it to 0.5 ms)."""

    GROUP_ROWS = 4096
    SLICE_ROWS = 256

    def __init__(
        self,
        out_dir: Path,
        *,
        expect: Expect,
        metrics: Metrics,
        part: str | None = None,
        batch_rows: int = 2048,
        epoch_offset: int | None = None,
        threaded: bool = True,
        expect_by_stream: Mapping[str, Expect] | None = None,
        target_by_stream: Mapping[str, str] | None = None,
        observer: ResultObserver | None = None,
    ) -> None:
        """threaded: process results on a thread (open loop: keeps the event loop free for the
        schedule); unthreaded: on the loop, in the tick (closed loop: no schedule to protect,
        and the thread's GIL handoffs measured as about 2x the CPU per request)."""
        self.out_dir = out_dir
        mkdir_private(out_dir)
        self.expect = expect
        self.expect_by_stream = dict(expect_by_stream or {})
        # a shot's target is named only when a run has several; the results name it always
        # (its URL), so `--by target` and DuckDB see where each request went
        self.target_by_stream = dict(target_by_stream or {})
        self.observer = observer
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.offset = _mono_to_epoch() if epoch_offset is None else epoch_offset
        name = f"results-{part}.parquet" if part else "results.parquet"
        self.path = out_dir / name
        self._writer = pq.ParquetWriter(
            self.path, FILE_SCHEMA, compression="zstd", write_page_checksum=True
        )
        self._rows: list[tuple[Shot, Prepared | None, int, Outcome, str]] = []
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._queue: queue.Queue[list[Any] | None] = queue.Queue()  # never blocks the loop
        self._error: BaseException | None = None
        self.threaded = threaded
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name="loadtape-results", daemon=True)
            self._thread.start()
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
    ) -> None:
        """One result: kept as a tuple (the hot path); columns are built when draining."""
        outcome = self.expect_by_stream.get(shot.stream, self.expect).outcome(out.status, out.error)
        if outcome == "ok":
            self.ok += 1
        elif outcome == "expected":
            self.expected += 1
        else:
            self.failed += 1
        self._rows.append((shot, prepared, intended_mono, out, outcome))
        self.rows += 1
        if len(self._rows) >= self.batch_rows:
            self.handover()

    def _columns(
        self, rows: list[tuple[Shot, Prepared | None, int, Outcome, str]]
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
            "target": [s.target or self.target_by_stream.get(s.stream, "") for s in shots],
            "copy": [s.copy for s in shots],
            "loop": [s.loop for s in shots],
            "session": [s.session for s in shots],
            "source_writer": [s.source[0] if s.source else None for s in shots],
            "source_seq": [s.source[1] if s.source else None for s in shots],
            "method": [q.method for q in reqs],
            "api": [
                p.surface.name if p is not None else q.api for p, q in zip(preps, reqs, strict=True)
            ],
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
            "first_text_ns": [
                o.first_text_ns + off if o.first_text_ns is not None else None for o in outs
            ],
            "end_ns": [o.end_ns + off for o in outs],
            "status": [o.status for o in outs],
            "outcome": [r[4] for r in rows],
            "error_kind": [o.error for o in outs],
            "error_message": [o.error_msg for o in outs],
            "retry_after": [o.retry_after for o in outs],
            "bytes_in": [o.bytes_in for o in outs],
            "prompt_tokens": [o.prompt_tokens for o in outs],
            "completion_tokens": [o.completion_tokens for o in outs],
            "reasoning_tokens": [o.reasoning_tokens for o in outs],
            "cached_tokens": [o.cached_tokens for o in outs],
            "cache_write_tokens": [o.cache_write_tokens for o in outs],
            "finish_reason": [o.finish_reason for o in outs],
            "events": [o.events for o in outs],
            "text_events": [o.text_events for o in outs],
            "reasoning_events": [o.reasoning_events for o in outs],
            "tool_events": [o.tool_events for o in outs],
            "stream_complete": [o.complete for o in outs],
            "response_id": [o.response_id for o in outs],
            "minted_ids": [o.minted or None for o in outs],
            "answer_hash": [msg_hash(o.answer) if o.answer is not None else None for o in outs],
            "token_offsets_us": [
                [(t - o.sent_ns) // 1000 for t in o.token_ns] if o.token_ns else None for o in outs
            ],
            "body_hash": [o.body_hash for o in outs],
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

    def _slice(self, cols: dict[str, list[Any]]) -> None:
        arrays = [pa.array(cols[c], SCHEMA.field(c).type) for c in COLUMNS]
        self._pending.append(pa.RecordBatch.from_arrays(arrays, schema=SCHEMA))
        self._pending_rows += len(cols["seq"])
        self.metrics.record_batch(cols)
        if self.observer is not None:
            self.observer.record(cols)

    def _write_pending(self, force: bool = False) -> None:
        if not self._pending or (self._pending_rows < self.GROUP_ROWS and not force):
            return
        table = pa.Table.from_batches(self._pending, schema=SCHEMA)
        self._pending, self._pending_rows = [], 0
        self._writer.write_table(with_derived(table))

    def _work(self) -> None:
        """The results thread."""
        background_priority()
        while True:
            rows = self._queue.get()
            try:
                if rows is None:
                    return
                self._process(rows, yield_gil=True)
            finally:
                self._queue.task_done()

    def _process(self, rows: list[Any], *, yield_gil: bool) -> None:
        if self._error is not None:
            return  # the error is raised at close()
        try:
            for lo in range(0, len(rows), self.SLICE_ROWS):
                self._slice(self._columns(rows[lo : lo + self.SLICE_ROWS]))
                if yield_gil:
                    # Let the event loop have the GIL between slices: a C call (pa.array, numpy)
                    # holds it for its whole length, whatever the switch interval says.
                    time.sleep(0)
            self._write_pending()
            now_s = (time.time_ns() - self.metrics.run_start_ns) // 1_000_000_000
            self.metrics.seal_intervals(before_sec=now_s - 1)
        except BaseException as exc:  # disk full, ...: reported when the run closes
            self._error = exc

    def handover(self) -> None:
        """Give the rows collected so far to the results thread (called from the loop)."""
        rows = self._rows
        if rows:
            self._rows = []
            if self.threaded:
                self._queue.put(rows)
            else:
                self._process(rows, yield_gil=False)

    def flush(self) -> None:
        """Process everything collected so far, and wait for it."""
        self.handover()
        if self._thread is not None:
            self._queue.join()
        self._write_pending(force=True)

    def close(self) -> None:
        if self.closed:
            return
        self.handover()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        self.closed = True
        try:
            if self._error is None:
                self._write_pending(force=True)
        finally:
            self._writer.close()
        if self._error is not None:
            raise UserError(f"{self.path}: could not write results ({self._error})")


def warm_up() -> None:
    """Run one synthetic row through Arrow conversion and the histograms before a run starts,
    so first-call costs (lazy imports, numpy and Arrow code paths) do not land on the first
    shots as schedule lag."""
    row: dict[str, list[Any]] = {c: [None] for c in COLUMNS}
    row.update(
        seq=[0],
        stream=["warmup"],
        endpoint=["/"],
        model=[""],
        intended_ns=[0],
        sent_ns=[1],
        end_ns=[2],
        headers_ns=[1],
        first_token_ns=[1],
        status=[200],
        outcome=["ok"],
        bytes_in=[0],
        token_offsets_us=[[0, 1]],
        completion_tokens=[2],
        prompt_tokens=[1],
    )
    pa.RecordBatch.from_arrays(
        [pa.array(row[c], SCHEMA.field(c).type) for c in COLUMNS], schema=SCHEMA
    )
    m = Metrics()
    m.record_batch(row)
    m.seal_intervals()
