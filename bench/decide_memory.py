"""Benchmark: peak memory and time of `compare` and `diff` on large runs.

Builds, once, a capture of N exchanges (chat, half streamed with 16 SSE chunks, bodies) and two
results directories of N requests replayed from it (results.parquet in 100k-row pieces,
histograms, run.json), then runs `loadtape compare A B` and `loadtape diff A --capture C` each
in a fresh process and reports its peak RSS (getrusage of the child) and wall time. With
`--tree DIR` the same commands run from another checkout too (e.g. the commit before a change),
for a ratio in one run. Goal (issue 16): <= 300 MB peak RSS at 1M rows.

    python bench/decide_memory.py [--rows 1000000] [--tree /tmp/before] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captures.reader import Capture  # noqa: E402
from captures.testing import synthetic_records  # noqa: E402
from captures.writer import CaptureWriter  # noqa: E402
from replay.measure.metrics import Metrics  # noqa: E402
from replay.measure.results import COLUMNS, SCHEMA  # noqa: E402
from replay.measure.resultsdir import write_histograms, write_run_json  # noqa: E402

MS = 1_000_000
T0 = 1_767_225_600_000_000_000


def build_capture(path: Path, n: int) -> None:
    base = synthetic_records(2000, rate=1000, seed=1)
    with CaptureWriter(path) as w:
        for lo in range(0, n, 4096):
            batch = []
            for i in range(lo, min(lo + 4096, n)):
                r = dict(base[i % len(base)])
                r["req_start_ns"] = T0 + i * 1_000_000
                batch.append(r)
            w.append_many(batch)
            w.tick()


def build_results(out: Path, capture: Path, n: int, seed: int, slowdown: float) -> None:
    """n results replayed from the capture's rows, in order (source_writer, source_seq)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    metrics = Metrics(run_start_ns=T0)
    writer = pq.ParquetWriter(out / "results.parquet", SCHEMA, compression="zstd")
    done = 0
    for batch in Capture(capture).batches(["writer_id", "seq", "stream", "status"]):
        m = batch.num_rows
        if done >= n:
            break
        m = min(m, n - done)
        sw = batch.column("writer_id").to_pylist()[:m]
        ss = batch.column("seq").to_pylist()[:m]
        streamed = batch.column("stream").to_pylist()[:m]
        intended = T0 + (np.arange(done, done + m, dtype=np.int64) * MS)
        sent = intended + rng.integers(0, 200_000, m)
        ttft = (rng.lognormal(3.0, 0.4, m) * slowdown * MS).astype(np.int64)
        end = sent + ttft + 16 * 5 * MS
        offsets = [
            (ttft[i] // 1000 + np.arange(16) * 5000).astype(np.int32).tolist()
            if streamed[i]
            else None
            for i in range(m)
        ]
        cols = {c: [None] * m for c in COLUMNS}
        cols.update(
            seq=list(range(done, done + m)),
            stream=["replay"] * m,
            target=[""] * m,
            copy=[0] * m,
            loop=[0] * m,
            source_writer=sw,
            source_seq=ss,
            method=["POST"] * m,
            req_bytes=[200] * m,
            bytes_in=[900] * m,
            api=["chat"] * m,
            endpoint=["/v1/chat/completions"] * m,
            model=["small"] * m,
            intended_ns=intended.tolist(),
            sent_ns=sent.tolist(),
            headers_ns=(sent + ttft // 2).tolist(),
            first_token_ns=[int(sent[i] + ttft[i]) if streamed[i] else None for i in range(m)],
            end_ns=end.tolist(),
            status=[200] * m,
            outcome=["ok"] * m,
            completion_tokens=[16] * m,
            prompt_tokens=[50] * m,
            finish_reason=["stop"] * m,
            token_offsets_us=offsets,
            recorded_status=[200] * m,
            recorded_chunks=[16 if s else 1 for s in streamed],
            recorded_completion_tokens=[16] * m,
            recorded_finish_reason=["stop"] * m,
        )
        metrics.record_batch(cols)
        writer.write_table(pa.Table.from_pydict(cols, schema=SCHEMA))
        done += m
    writer.close()
    write_histograms(out, metrics)
    write_run_json(
        out,
        {
            "counts": {"planned": done, "sent": done, "ok": done, "expected": 0, "failed": 0},
            "capture": {"path": str(capture)},
            "streams": {"replay": {"kind": "replay"}},
            "mode": "open",
        },
    )


def measure(tree: Path, args: list[str]) -> tuple[float, float, int]:
    """(peak RSS MB, wall s, exit code) of `loadtape ARGS` run from a checkout."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"p = subprocess.run([sys.executable, '-c', 'import cli; cli.main()', *{args!r}],"
        " stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
        "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(ru.ru_maxrss / 1024, time.perf_counter() - t, p.returncode)\n"
        "sys.stderr.write(p.stderr[-300:])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)
    rss, wall, rc = p.stdout.split()
    if int(rc) not in (0, 1):
        print(f"  ({tree}: exit {rc}: {p.stderr.strip()[-200:]})")
    return float(rss), float(wall), int(rc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tree", help="another checkout to run the same commands from")
    ap.add_argument("--keep", help="build (or reuse) the data here instead of a temp dir")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="loadtape-decide-"))
    cap, ra, rb = work / "capture", work / "a", work / "b"
    t = time.perf_counter()
    if not (cap / "parts").is_dir():
        build_capture(cap, a.rows)
    if not (ra / "run.json").exists():
        build_results(ra, cap, a.rows, 1, 1.0)
        build_results(rb, cap, a.rows, 2, 1.1)
    print(f"data: {a.rows:,} rows in {work} ({time.perf_counter() - t:.0f} s to build)")
    commands = {
        "compare": ["compare", str(ra), str(rb), "--format", "json"],
        "diff": ["diff", str(ra), "--capture", str(cap), "--format", "json"],
    }
    trees = {"this": ROOT, **({"other": Path(a.tree).resolve()} if a.tree else {})}
    got: dict[str, dict[str, list[float]]] = {}
    for name, args in commands.items():
        for label, tree in trees.items():
            rss, wall, rc = measure(tree, args)
            got.setdefault(name, {})[label] = [rss, wall, rc]
            print(f"{name:8s} {label:6s} peak RSS {rss:8.1f} MB   {wall:7.1f} s   exit {rc}")
    if "other" in trees:
        for name in commands:
            this, other = got[name]["this"], got[name]["other"]
            print(
                f"{name:8s} this/other: RSS {this[0] / other[0]:.2f}x, time {this[1] / other[1]:.2f}x"
            )
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "decide_memory.json").write_text(json.dumps(got, indent=2) + "\n")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
