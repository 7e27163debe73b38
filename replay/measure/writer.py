"""The results writer: result rows collected on the event loop, turned into Arrow batches,
histograms and Parquet row groups, in the loop's idle time (open loop) or in its tick (closed
loop). The schema, `Expect` and the derived columns are in results.py."""

from __future__ import annotations

import collections
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from captures.errors import UserError
from captures.store import mkdir_private
from replay.plan import Shot
from replay.prefetch import background_priority
from replay.rewrite import Prepared
from replay.send.outcome import Outcome

from .columns import NUMERIC, Row, column_steps
from .metrics import Metrics
from .results import COLUMNS, FILE_SCHEMA, SCHEMA, Expect, ResultObserver, with_derived

ARRAY_STEP_VALUES = 512  # values made into Arrow arrays per step
FREE_STEP_COLUMNS = 4  # a slice's column lists freed per step
FREE_STEP_ROWS = 32  # a slice's rows freed per step
# A second's interval histograms are sealed (encoded, no longer added to) this many seconds
# after it ends by the clock: its rows come in up to a handover later (the runner hands the
# results over at least every second) plus the slice's work. Rows later still are merged into
# the sealed second (Metrics.seal_steps), at the price of a decoding.
SEAL_LAG_S = 2


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
      processes the backlog beyond `BACKLOG_ROWS` (or `BACKLOG_BYTES`) itself, and the lag
      shows it.
    - inline (closed loop): in the loop's 100 ms tick; there is no schedule to protect.
    """

    GROUP_ROWS = 4096
    SLICE_ROWS = 256
    # cooperative: a slice is cut into steps of a few columns or a few numpy passes each; a
    # slice of 512 costs about half as much per row as one of 128 (a step's fixed costs), and
    # its longest steps (~0.1 ms) fit between shots on the loop
    STEP_SLICE_ROWS = 512
    # where the engine's thread times every send (the compiled sender), the loop's steps only
    # have to fit between its ticks and keep off bursts: a slice of 4096 costs 0.6x a row of
    # one of 512 (bench/results_cost.py), its longest steps ~0.9 ms
    TIMED_SLICE_ROWS = 4096
    BACKLOG_ROWS = 65_536
    FIRST_STEP_NS = 100_000  # a step not seen before is expected to take this long
    # under pressure (a backlog of PRESSURE_ROWS) a step may run past the window, by
    # MIN_OVERRUN_NS at first and more as the backlog grows, MAX_OVERRUN_NS at BACKLOG_ROWS
    PRESSURE_ROWS = 4096
    # the same by the requests' bytes the backlog's rows hold (each keeps its prepared request
    # and the recorded body beside it: ~100 KB a row of 50 KB LLM requests, whose 3.6k rows
    # of backlog held about 360 MB before the rows alone made any pressure)
    PRESSURE_BYTES = 16 << 20
    BACKLOG_BYTES = 128 << 20
    # rows collected are handed over at batch_rows, or at so many bytes of their requests: with
    # slices of 4096, 50 KB requests at a few thousand a second would have held hundreds of MB
    # between handovers
    HANDOVER_BYTES = 16 << 20
    MIN_OVERRUN_NS = 50_000
    MAX_OVERRUN_NS = 1_000_000
    REFUSALS_TO_DECAY = 32

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
        slice_rows: int = STEP_SLICE_ROWS,
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
        self.batch_rows = max(batch_rows, slice_rows)  # handed over at add, at the latest
        self.offset = _mono_to_epoch() if epoch_offset is None else epoch_offset
        self.clock = clock
        name = f"results-{part}.parquet" if part else "results.parquet"
        self.path = out_dir / name
        self._writer = pq.ParquetWriter(
            self.path, FILE_SCHEMA, compression="zstd", write_page_checksum=True
        )
        self._rows: list[Row] = []
        self._rows_bytes = 0  # of the prepared requests the collected rows hold
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._error: BaseException | None = None
        self.cooperative = cooperative
        self.slice_rows = slice_rows  # rows a slice of cooperative work takes
        self._backlog: collections.deque[Row] = collections.deque()
        self._backlog_bytes = 0  # of the prepared requests its rows hold
        self._job: Iterator[None] | None = None  # the slice being processed, step by step
        self._cost: dict[tuple[int, int], int] = {}  # step site -> expected ns (learnt)
        self._last: dict[tuple[int, int], int] = {}  # step site -> the last one's ns
        self._refusals = 0  # windows refused under pressure since the last decay
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
        if prepared is not None:
            self._rows_bytes += len(prepared.raw)
        if len(self._rows) >= self.batch_rows or self._rows_bytes >= self.HANDOVER_BYTES:
            self.handover()

    @property
    def collected(self) -> int:
        """Results collected and not yet handed over."""
        return len(self._rows)

    # -- building a slice, in steps ------------------------------------------------------------
    def _columns(self, rows: list[Row]) -> dict[str, list[Any]]:
        cols: dict[str, list[Any]] = {}
        for _ in column_steps(rows, cols, self.offset, self.target_by_stream):
            pass
        return cols

    def _slice_steps(self, rows: list[Row]) -> Iterator[None]:
        cols: dict[str, list[Any]] = {}
        yield  # (the first step a slice takes is only this: its cost is learnt apart)
        yield from column_steps(rows, cols, self.offset, self.target_by_stream)
        arrays = []
        every = max(1, ARRAY_STEP_VALUES // max(len(rows), 1))  # columns per step
        for i, c in enumerate(COLUMNS):
            arrays.append(pa.array(cols[c], SCHEMA.field(c).type))
            if i % every == every - 1:
                yield
        self._pending.append(pa.RecordBatch.from_arrays(arrays, schema=SCHEMA))
        self._pending_rows += len(rows)
        yield
        # the histograms read the numbers from Arrow (no Python int per value)
        numbers = {c: a for c, a in zip(COLUMNS, arrays, strict=True) if c in NUMERIC}
        yield from self.metrics.record_steps(cols, numbers)
        if self.observer is not None:
            self.observer.record(cols)
            yield
        now_s = (time.time_ns() - self.metrics.run_start_ns) // 1_000_000_000
        yield from self.metrics.seal_steps(before_sec=now_s - SEAL_LAG_S)
        # Let go of the slice a part at a time: its column lists and its rows (their shots,
        # requests and outcomes) are tens of thousands of objects, which took 0.3-1.4 ms to
        # free at once at the slice's end.
        yield
        for i, c in enumerate(list(cols)):
            del cols[c]
            if i % FREE_STEP_COLUMNS == FREE_STEP_COLUMNS - 1:
                yield
        while rows:
            del rows[-FREE_STEP_ROWS:]
            yield

    def _slice(self, rows: list[Row]) -> None:
        _exhaust(self._slice_steps(rows))

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
        rows = [b.popleft() for _ in range(min(n, len(b)))]
        self._backlog_bytes -= _request_bytes(rows)
        return rows

    def work(self, until_ns: int | None, stop_ns: int | None = None) -> bool:
        """Cooperative mode: results work in short steps, each taken only if it is expected to
        end before until_ns (None: no shot is waiting), none begun after stop_ns (the loop's
        turn; default until_ns). True: the turn ended with a step left that fits the window
        (call again on the next turn); False: no work left, or none that fits before until_ns
        (wait for a longer window). Each step's cost is learnt where it starts (steps differ: a
        column list is tens of microseconds, an interval pass hundreds). Under pressure (a
        backlog of PRESSURE_ROWS) a step may run past the window by an allowance that grows
        with the backlog (`overrun_ns`): where the gaps between shots are shorter than any step
        (20k req/s: 50 us), the results keep up at the price of shots a step late, instead of
        a backlog that grows to BACKLOG_ROWS and is then processed in the tick at once."""
        clock = self.clock
        now = clock()
        stop = until_ns if stop_ns is None else stop_ns
        while True:
            if self._job is None:
                if not self._backlog or self._error is not None:
                    return False
                self._job = self._slice_steps(self._take(self.slice_rows))
            where = _step_site(self._job)
            est = self._cost.get(where, self.FIRST_STEP_NS)
            if until_ns is not None:
                over = self.overrun_ns()
                if over:  # however long it once took, a step goes before the backlog is full
                    est = min(est, self.MAX_OVERRUN_NS)
                if est > until_ns - now + over:
                    if over:
                        self._refused(where, est)
                    return False
            if stop is not None and now >= stop:
                return True
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
            self._cost[where] = self._learnt(where, est, took)
            now = then

    def _learnt(self, where: tuple[int, int], est: int, took: int) -> int:
        """A step's new estimate: down slowly after a shorter one, up to the shorter of the
        last two after a longer one (the first is measured against FIRST_STEP_NS). One long
        step (its first, cold; a collection of the young objects in it; the VM not scheduling
        the loop) once raised a step's estimate for good: it was never taken again in a
        window, so never seen to be short again, and at 20k req/s the backlog grew until the
        tick processed it at once (a 100-170 ms stall)."""
        last = self._last.get(where, self.FIRST_STEP_NS)
        self._last[where] = took
        if took <= est:
            return est - ((est - took) >> 3)
        return max(est, min(took, last))

    def _refused(self, where: tuple[int, int], est: int) -> None:
        """Under pressure, a step's estimate also comes down while it waits (by an eighth every
        REFUSALS_TO_DECAY windows refused): long steps seen twice in a row (the VM away for
        both) must not keep their kind out of every window until the backlog is full."""
        n = self._refusals = self._refusals + 1
        if n >= self.REFUSALS_TO_DECAY:
            self._refusals = 0
            self._cost[where] = est - (est >> 3)

    def overrun_ns(self) -> int:
        """How far past its window a step may run now: 0 without pressure, then from
        MIN_OVERRUN_NS up to MAX_OVERRUN_NS as the backlog nears BACKLOG_ROWS or BACKLOG_BYTES."""
        full = max(
            (len(self._backlog) - self.PRESSURE_ROWS) / (self.BACKLOG_ROWS - self.PRESSURE_ROWS),
            (self._backlog_bytes - self.PRESSURE_BYTES)
            / (self.BACKLOG_BYTES - self.PRESSURE_BYTES),
        )
        if full <= 0:
            return 0
        low, high = self.MIN_OVERRUN_NS, self.MAX_OVERRUN_NS
        return low + int((high - low) * min(full, 1.0))

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

    def _over(self) -> bool:
        return len(self._backlog) > self.BACKLOG_ROWS or self._backlog_bytes > self.BACKLOG_BYTES

    def _drain(self, keep: bool = False) -> None:
        """Process the backlog now: all of it, or (keep) until it is within its bounds."""
        self._finish_job()
        while self._backlog and self._error is None and (not keep or self._over()):
            self._guarded(functools.partial(self._slice, self._take(self.SLICE_ROWS)))
            self._guarded(self._after_slice)

    def _to_backlog(self) -> None:
        rows = self._rows
        if rows:
            self._rows = []
            self._backlog.extend(rows)
            self._backlog_bytes += self._rows_bytes
            self._rows_bytes = 0

    def handover(self) -> None:
        """Move the rows collected so far to the backlog (called from the loop). Inline, the
        backlog is processed now; cooperative, in the loop's idle time, or now beyond
        BACKLOG_ROWS."""
        self._to_backlog()
        if not self.cooperative:
            self._drain()
        elif self._over():
            self._drain(keep=True)

    def flush(self) -> None:
        """Process and write everything collected so far, and wait for it."""
        self._to_backlog()
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


def _step_frame(gen: Iterator[None]) -> tuple[Any, int]:
    """Where a generator of steps will go on from: the innermost code and the bytecode offset
    it waits at (not the line: working out f_lineno was 2% of the loop's samples at 2k req/s)."""
    g: Any = gen
    while getattr(g, "gi_yieldfrom", None) is not None:
        g = g.gi_yieldfrom
    frame = getattr(g, "gi_frame", None)
    return (g.gi_code, frame.f_lasti) if frame is not None else (None, 0)


def _step_site(gen: Iterator[None]) -> tuple[int, int]:
    """A step's site as a key: the code's identity, not the code (hashing a code object hashes
    its constants and names, 2.6 us for column_steps, twice a step; perf at 20k req/s)."""
    code, offset = _step_frame(gen)
    return id(code), offset


def _request_bytes(rows: list[Row]) -> int:
    return sum(len(r[1].raw) for r in rows if r[1] is not None)


def _exhaust(steps: Iterator[None]) -> None:
    for _ in steps:
        pass
