"""Benchmark: what recording a result costs the event loop, and how long its steps are.

An open-loop run records its results in the loop's idle time, in steps (`ResultWriter.work`):
the column lists, the Arrow arrays, the histograms, the per-second intervals. This times every
step of that work, in-process and without a target, on the rows of a real plan (a capture of
GETs, planned and prepared as a replay does) with outcomes made up to look like nginx's.

Printed, per slice size (the rows one slice of work takes: the writer's STEP_SLICE_ROWS, 512,
or TIMED_SLICE_ROWS, 4096, where the compiled sender times the sends): CPU per result row, and
the longest kinds of step (median and p95, where each starts). Peer, in the same run: the
previous slice size, 128 rows. A step is taken only where it fits before the next shot is due
(before the loop's next tick, with the compiled sender), so the step lengths are what the
schedule sees.

    python bench/results_cost.py [--rows 30000] [--slices 128,512,4096]
"""

from __future__ import annotations

import argparse
import collections
import dis
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captures.testing import T0_NS, http_record, write_capture  # noqa: E402
from replay.measure.metrics import Metrics  # noqa: E402
from replay.measure.results import Expect  # noqa: E402
from replay.measure.writer import ResultWriter, _step_frame  # noqa: E402
from replay.rewrite import cached_prepare  # noqa: E402
from replay.send.outcome import Outcome  # noqa: E402
from replay.workload.replaying import ReplayOptions, build_replay  # noqa: E402


def _line(code: Any, offset: int) -> int | None:
    """The source line of a bytecode offset (a step site is a code object and an offset)."""
    line = None
    for start, ln in dis.findlinestarts(code):
        if start > offset:
            break
        line = ln
    return line


def result_rows(cap: Path, n: int) -> list[Any]:
    streams, _ = build_replay(ReplayOptions(capture=str(cap), target="http://127.0.0.1:9"))
    prepare = cached_prepare(streams[0].rewriter)
    t0 = time.monotonic_ns()
    rows = []
    for i, shot in zip(range(n), streams[0].shots, strict=False):
        due = t0 + i * 100_000
        out = Outcome(
            sent_ns=due + 30_000,
            headers_ns=due + 80_000,
            end_ns=due + 90_000,
            status=200,
            bytes_in=250,
        )
        rows.append((shot, prepare(shot), due, out, "ok"))
    return rows


def measure(rows: list[Any], slice_rows: int, work: Path) -> dict[str, Any]:
    w = ResultWriter(
        work,
        expect=Expect(),
        metrics=Metrics(time.time_ns()),
        cooperative=True,
        slice_rows=slice_rows,
    )
    gc.collect()
    by_site: dict[str, list[int]] = collections.defaultdict(list)
    total = 0
    for k in range(0, len(rows), slice_rows):
        job = w._slice_steps(rows[k : k + slice_rows])
        while True:
            code, line = _step_frame(job)  # type: ignore[misc]
            t = time.thread_time_ns()
            try:
                next(job)
            except StopIteration:
                w._after_slice()
                total += time.thread_time_ns() - t
                break
            d = time.thread_time_ns() - t
            total += d
            by_site[f"{code.co_name}:{_line(code, line)}"].append(d)
    w.close()
    steps = sorted(
        (
            (statistics.median(v) / 1e3, sorted(v)[int(len(v) * 0.95)] / 1e3, site)
            for site, v in by_site.items()
        ),
        key=lambda x: -x[0],
    )
    return {
        "us_per_row": total / len(rows) / 1e3,
        "steps": len(by_site),
        "longest": [{"site": s, "median_us": m, "p95_us": p} for m, p, s in steps[:5]],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=30_000)
    ap.add_argument("--slices", default="128,512,4096")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    slices = [int(s) for s in args.slices.split(",")]
    work = Path(tempfile.mkdtemp(prefix="loadtape-results-cost-"))
    cap = write_capture(
        work / "cap",
        [http_record(start_ns=T0_NS + i * 100_000, path=f"/r/{i % 50}") for i in range(args.rows)],
    )
    rows = result_rows(cap, args.rows)
    print(f"{len(rows)} result rows (GETs, planned and prepared)")
    runs: dict[int, list[dict[str, Any]]] = {s: [] for s in slices}
    for r in range(args.rounds):  # interleaved: the VM's speed drifts between runs
        for s in slices:
            res = measure(rows, s, work / f"run-{s}-{r}")
            runs[s].append(res)
            print(f"round {r} slice {s:5d}: {res['us_per_row']:6.2f} us CPU per result row")
    summary = {}
    for s in slices:
        best = min(runs[s], key=lambda x: x["us_per_row"])
        summary[str(s)] = best
        print(f"slice {s:5d}: best {best['us_per_row']:.2f} us per row; longest steps:")
        for st in best["longest"]:
            print(f"    {st['site']:28s} median {st['median_us']:7.1f} us  p95 {st['p95_us']:7.1f}")
    if len(slices) > 1:
        a, b = summary[str(slices[0])], summary[str(slices[-1])]
        print(
            f"slice {slices[-1]}/{slices[0]}: CPU per row {b['us_per_row'] / a['us_per_row']:.2f}x"
        )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "results_cost.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
