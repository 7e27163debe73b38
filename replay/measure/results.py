"""Results: one row per request (`SCHEMA`), written to Parquet in batches (bounded memory),
with the histograms fed from the same batches; `Expect` decides which statuses
count as success, expected shedding or failure. Injected credentials never appear in them: the
request headers a replay sends are not recorded, only what the results need. (Reading a results
directory back: resultsdir.py.)
"""

from __future__ import annotations

import collections
import functools
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
    """Collects result rows on the event loop (one tuple each: the hot path), builds the Arrow
    batches, records the histograms, seals the per-second intervals and writes Parquet row
    groups. Two ways, by the run:

    - cooperative (open loop): the dispatcher hands the writer the loop's idle time between
      shots (`work(until_ns)`), and the work is done in steps of tens of microseconds, each
      ending before the next shot is due. A results thread beside the loop measured worse:
      every GIL handoff is a thread wakeup (~50 us of CPU on the development VM), and the
      loop waited for the GIL at every 100 ms batch (p99 lag 2-3 ms at 5k req/s, against
      0.2 ms with the work deferred). Only the Parquet writes, C++ that releases the GIL, go
      to a writer thread. If the loop has no idle time (a rate beyond one worker), the tick
      processes the backlog beyond `BACKLOG_ROWS` itself, and the lag shows it.
    - inline (closed loop): in the loop's 100 ms tick; there is no schedule to protect.
    """

    GROUP_ROWS = 4096
    SLICE_ROWS = 256
    STEP_SLICE_ROWS = 128  # cooperative: smaller slices make shorter steps
    BACKLOG_ROWS = 65_536
    FULL_TURN_NS = 250_000
    FIRST_STEP_NS = 100_000  # a step not seen before is expected to take this long
    PRESSURE_ROWS = 4096
    MIN_WINDOW_NS = 40_000

    def __init__(
        self,
        out_dir: Path,
        *,
        expect: Expect,
        metrics: Metrics,
        part: str | None = None,
        batch_rows: int = 2048,
        epoch_offset: int | None = None,
        cooperative: bool = False,
        expect_by_stream: Mapping[str, Expect] | None = None,
        target_by_stream: Mapping[str, str] | None = None,
        observer: ResultObserver | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
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
        self.clock = clock
        name = f"results-{part}.parquet" if part else "results.parquet"
        self.path = out_dir / name
        self._writer = pq.ParquetWriter(
            self.path, FILE_SCHEMA, compression="zstd", write_page_checksum=True
        )
        self._rows: list[Row] = []
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._error: BaseException | None = None
        self.cooperative = cooperative
        self._backlog: collections.deque[Row] = collections.deque()
        self._job: Iterator[None] | None = None  # the slice being processed, step by step
        self._cost: dict[tuple[object, int], int] = {}  # step site -> expected ns (learnt)
        self._writes: queue.Queue[list[pa.RecordBatch] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if cooperative:
            self._thread = threading.Thread(
                target=self._write_work, name="loadtape-results", daemon=True
            )
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
        """One result: kept as a tuple (the hot path); columns are built later."""
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

    # -- building a slice, in steps ------------------------------------------------------------
    def _columns(self, rows: list[Row]) -> dict[str, list[Any]]:
        cols: dict[str, list[Any]] = {}
        for _ in self._column_steps(rows, cols):
            pass
        return cols

    def _column_steps(self, rows: list[Row], cols: dict[str, list[Any]]) -> Iterator[None]:
        """Fill `cols` (column lists) from result rows, yielding every few columns."""
        off = self.offset
        shots = [r[0] for r in rows]
        preps = [r[1] for r in rows]
        outs = [r[3] for r in rows]
        recs = [s.recorded for s in shots]
        reqs = [s.request for s in shots]
        nil = [None] * len(rows)
        yield
        cols["seq"] = [s.seq for s in shots]
        cols["stream"] = [s.stream for s in shots]
        cols["target"] = [s.target or self.target_by_stream.get(s.stream, "") for s in shots]
        cols["copy"] = [s.copy for s in shots]
        cols["loop"] = [s.loop for s in shots]
        cols["session"] = [s.session for s in shots]
        cols["source_writer"] = [s.source[0] if s.source else None for s in shots]
        cols["source_seq"] = [s.source[1] if s.source else None for s in shots]
        yield
        cols["method"] = [q.method for q in reqs]
        cols["api"] = [
            p.surface.name if p is not None else q.api for p, q in zip(preps, reqs, strict=True)
        ]
        cols["endpoint"] = [q.path for q in reqs]
        cols["model"] = [
            p.model if p is not None else q.model for p, q in zip(preps, reqs, strict=True)
        ]
        cols["req_bytes"] = [len(p.body) if p is not None else 0 for p in preps]
        yield
        cols["intended_ns"] = [r[2] + off for r in rows]
        cols["sent_ns"] = [o.sent_ns + off for o in outs]
        cols["headers_ns"] = [
            o.headers_ns + off if o.headers_ns is not None else None for o in outs
        ]
        cols["first_token_ns"] = [
            o.first_token_ns + off if o.first_token_ns is not None else None for o in outs
        ]
        cols["first_text_ns"] = [
            o.first_text_ns + off if o.first_text_ns is not None else None for o in outs
        ]
        cols["end_ns"] = [o.end_ns + off for o in outs]
        yield
        cols["status"] = [o.status for o in outs]
        cols["outcome"] = [r[4] for r in rows]
        cols["error_kind"] = [o.error for o in outs]
        cols["error_message"] = [o.error_msg for o in outs]
        cols["retry_after"] = [o.retry_after for o in outs]
        cols["bytes_in"] = [o.bytes_in for o in outs]
        yield
        cols["prompt_tokens"] = [o.prompt_tokens for o in outs]
        cols["completion_tokens"] = [o.completion_tokens for o in outs]
        cols["reasoning_tokens"] = [o.reasoning_tokens for o in outs]
        cols["cached_tokens"] = [o.cached_tokens for o in outs]
        cols["cache_write_tokens"] = [o.cache_write_tokens for o in outs]
        cols["finish_reason"] = [o.finish_reason for o in outs]
        yield
        cols["events"] = [o.events for o in outs]
        cols["text_events"] = [o.text_events for o in outs]
        cols["reasoning_events"] = [o.reasoning_events for o in outs]
        cols["tool_events"] = [o.tool_events for o in outs]
        cols["stream_complete"] = [o.complete for o in outs]
        cols["response_id"] = [o.response_id for o in outs]
        cols["minted_ids"] = [o.minted or None for o in outs]
        yield
        cols["answer_hash"] = [msg_hash(o.answer) if o.answer is not None else None for o in outs]
        cols["token_offsets_us"] = [
            [(t - o.sent_ns) // 1000 for t in o.token_ns] if o.token_ns else None for o in outs
        ]
        cols["body_hash"] = [o.body_hash for o in outs]
        yield
        recorded = any(recs)
        for col, attr in _RECORDED:
            cols[col] = [getattr(r, attr) if r else None for r in recs] if recorded else nil
            if recorded:
                yield

    def _slice_steps(self, rows: list[Row]) -> Iterator[None]:
        cols: dict[str, list[Any]] = {}
        yield from self._column_steps(rows, cols)
        arrays = []
        for i, c in enumerate(COLUMNS):
            arrays.append(pa.array(cols[c], SCHEMA.field(c).type))
            if i % 4 == 3:
                yield
        self._pending.append(pa.RecordBatch.from_arrays(arrays, schema=SCHEMA))
        self._pending_rows += len(rows)
        yield
        yield from self.metrics.record_steps(cols)
        if self.observer is not None:
            self.observer.record(cols)
            yield
        now_s = (time.time_ns() - self.metrics.run_start_ns) // 1_000_000_000
        yield from self.metrics.seal_steps(before_sec=now_s - 1)

    def _slice(self, rows: list[Row]) -> None:
        for _ in self._slice_steps(rows):
            pass

    def _after_slice(self) -> None:
        if self._pending_rows >= self.GROUP_ROWS:
            batches, self._pending, self._pending_rows = self._pending, [], 0
            if self._thread is not None:
                self._writes.put(batches)
            else:
                self._write(batches)

    def _write(self, batches: list[pa.RecordBatch]) -> None:
        table = pa.Table.from_batches(batches, schema=SCHEMA)
        self._writer.write_table(with_derived(table))

    def _write_work(self) -> None:
        """The writer thread (cooperative mode): Parquet row groups, written by C++ that does
        not hold the GIL."""
        background_priority()
        while True:
            batches = self._writes.get()
            try:
                if batches is None:
                    return
                if self._error is None:
                    self._write(batches)
            except BaseException as exc:  # disk full, ...: reported when the run closes
                self._error = exc
            finally:
                self._writes.task_done()

    # -- doing the work ------------------------------------------------------------------------
    def _take(self, n: int) -> list[Row]:
        b = self._backlog
        return [b.popleft() for _ in range(min(n, len(b)))]

    def work(self, until_ns: int) -> bool:
        """Cooperative mode: results work in short steps, each taken only if it is expected to
        end before until_ns; True if work is left. Each step's cost is learnt where it starts
        (steps differ: a column list is tens of microseconds, an interval pass hundreds). Under
        pressure (a backlog of PRESSURE_ROWS) a step goes whenever MIN_WINDOW_NS is left, at
        the risk of running over."""
        clock = self.clock
        now = clock()
        turn = until_ns - now >= self.FULL_TURN_NS  # a full turn always takes a step
        while True:
            if self._job is None:
                if not self._backlog or self._error is not None:
                    return False
                self._job = self._slice_steps(self._take(self.STEP_SLICE_ROWS))
            where = _step_site(self._job)
            est = self._cost.get(where, self.FIRST_STEP_NS)
            left = until_ns - now
            pressed = len(self._backlog) > self.PRESSURE_ROWS and left >= self.MIN_WINDOW_NS
            if est > left and not (turn or pressed):
                return True
            turn = False
            try:
                next(self._job)
            except StopIteration:
                self._job = None
                self._guarded(self._after_slice)
            except BaseException as exc:  # reported when the run closes
                self._job = None
                self._error = exc
            then = clock()
            took = then - now
            # the estimate: rises at once to a longer step, decays slowly after a shorter one
            self._cost[where] = took if took > est else est - ((est - took) >> 3)
            now = then

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # disk full, ...: reported when the run closes
            self._error = exc

    def _finish_job(self) -> None:
        if self._job is not None:
            job, self._job = self._job, None
            self._guarded(functools.partial(_exhaust, job))
            self._guarded(self._after_slice)

    def _drain(self, keep: int = 0) -> None:
        """Process the backlog now, down to `keep` rows."""
        self._finish_job()
        while len(self._backlog) > keep and self._error is None:
            self._guarded(functools.partial(self._slice, self._take(self.SLICE_ROWS)))
            self._guarded(self._after_slice)

    def handover(self) -> None:
        """Move the rows collected so far to the backlog (called from the loop). Inline, the
        backlog is processed now; cooperative, in the loop's idle time, or now beyond
        BACKLOG_ROWS."""
        rows = self._rows
        if rows:
            self._rows = []
            self._backlog.extend(rows)
        if not self.cooperative:
            self._drain()
        elif len(self._backlog) > self.BACKLOG_ROWS:
            self._drain(keep=self.BACKLOG_ROWS)

    def flush(self) -> None:
        """Process and write everything collected so far, and wait for it."""
        self._rows, rows = [], self._rows
        self._backlog.extend(rows)
        self._drain()
        if self._thread is not None:
            self._writes.join()
        if self._pending and self._error is None:
            batches, self._pending, self._pending_rows = self._pending, [], 0
            self._guarded(functools.partial(self._write, batches))

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            if self._thread is not None:
                self._writes.put(None)
                self._thread.join()
            self._writer.close()
            self.closed = True
        if self._error is not None:
            raise UserError(f"{self.path}: could not write results ({self._error})")


Row = tuple[Shot, "Prepared | None", int, Outcome, str]


def _step_site(gen: Iterator[None]) -> tuple[object, int]:
    """Where a generator of steps will go on from: the innermost code and line it waits at."""
    g: Any = gen
    while getattr(g, "gi_yieldfrom", None) is not None:
        g = g.gi_yieldfrom
    frame = getattr(g, "gi_frame", None)
    return (g.gi_code, frame.f_lineno) if frame is not None else (None, 0)


def _exhaust(steps: Iterator[None]) -> None:
    for _ in steps:
        pass


_RECORDED = (
    ("recorded_status", "status"),
    ("recorded_ttfb_us", "ttfb_us"),
    ("recorded_first_chunk_us", "first_chunk_us"),
    ("recorded_chunks", "chunks"),
    ("recorded_completion_tokens", "completion_tokens"),
    ("recorded_finish_reason", "finish_reason"),
)


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
