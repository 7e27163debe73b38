"""Benchmark: capture format write and read throughput, with peers in the same run.

Write: records/s through CaptureWriter (journal frames + fsync every 100 ms + compaction into
Parquet parts) against mitmproxy's own FlowWriter (what `mitmdump -w` does) writing the same
exchanges as mitmproxy flows. Goal: >= 50k records/s for journal + compaction.

Read: rows/s and peak RSS of `Capture.rows()` (ordered k-way merge, bounded memory) over a 1M-row
capture, against pyarrow reading the same parts whole (`pq.read_table(...).to_pylist()`). Each read
runs in a fresh process so peak RSS is its own.

    python bench/capture_format.py [--rows 1000000] [--write-rows 200000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captures.schema import Record
from captures.testing import synthetic_records
from captures.writer import CaptureWriter


def template_records(n: int) -> list[Record]:
    """n records cycling through 5,000 distinct realistic ones, with fresh timestamps."""
    base = synthetic_records(5000, rate=1000, seed=1)
    out = []
    for i in range(n):
        r = dict(base[i % len(base)])
        r["req_start_ns"] = 1_700_000_000_000_000_000 + i * 100_000
        out.append(r)
    return out


def bench_write(
    d: Path, records: list[Record], batch: int = 256, compaction: str = "inline"
) -> dict[str, float]:
    """Append in batches (as the capture addon's writer thread does) with tick() after each."""
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p0 = time.process_time()
    t0 = time.perf_counter()
    with CaptureWriter(d, compaction=compaction) as w:
        for i in range(0, len(records), batch):
            w.append_many(records[i : i + batch])
            w.tick()
        t_journal = time.perf_counter() - t0
    total = time.perf_counter() - t0
    cpu = time.process_time() - p0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    size = sum(f.stat().st_size for f in (d / "parts").iterdir())
    n = len(records)
    return {
        "records": n,
        "seconds": total,
        "records_per_s": n / total,
        "appends_per_s": n / t_journal,
        "writer_cpu_us_per_record": cpu / n * 1e6,
        "compactor_cpu_us_per_record": child / n * 1e6,
        "parts": w.parts_written,
        "bytes_on_disk": size,
    }


def bench_mitmproxy_writer(path: Path, records: list[Record]) -> dict[str, float]:
    from mitmproxy import http, io
    from mitmproxy.test import tflow

    flows = []
    for r in records:
        f = tflow.tflow(resp=True)
        f.request = http.Request.make(
            r["method"],
            f"http://{r['host']}:{r['port']}{r['path']}",
            r["req_body"] or b"",
            dict(r["req_headers"]),
        )
        f.response = http.Response.make(
            r["status"] or 502, r["resp_body"] or b"", dict(r["resp_headers"] or [])
        )
        flows.append(f)
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        w = io.FlowWriter(fh)
        for f in flows:
            w.add(f)
        fh.flush()
        os.fsync(fh.fileno())
    dt = time.perf_counter() - t0
    return {
        "records": len(flows),
        "seconds": dt,
        "records_per_s": len(flows) / dt,
        "bytes_on_disk": path.stat().st_size,
    }


READ_PROBE = """
import sys, time

def hwm_kb():
    # VmHWM is this process's own peak (ru_maxrss survives exec and would include the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

mode, d = sys.argv[1], sys.argv[2]
base = hwm_kb()
t0 = time.perf_counter()
n = 0
if mode == "loadtape":
    from captures.reader import Capture
    cols = ["req_start_ns", "method", "path", "req_headers", "req_body", "session_key", "model"]
    for row in Capture(d).rows(cols):
        n += 1
elif mode == "loadtape-all":
    from captures.reader import Capture
    for row in Capture(d).rows():
        n += 1
else:
    import os, pyarrow as pa, pyarrow.parquet as pq
    cols = ["req_start_ns", "method", "path", "req_headers", "req_body", "session_key", "model"]
    parts = sorted(os.path.join(d, "parts", p) for p in os.listdir(os.path.join(d, "parts")))
    t = pa.concat_tables([pq.read_table(p, columns=cols) for p in parts])
    t = t.sort_by("req_start_ns")
    for row in t.to_pylist():
        n += 1
dt = time.perf_counter() - t0
print(n, dt, base, hwm_kb())
"""


def bench_read(d: Path, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", READ_PROBE, mode, str(d)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    n, dt, base, peak = int(out[0]), float(out[1]), int(out[2]), int(out[3])
    return {
        "rows": n,
        "seconds": dt,
        "rows_per_s": n / dt,
        "peak_rss_mb": peak / 1024,
        "rss_growth_mb": (peak - base) / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--write-rows", type=int, default=200_000)
    ap.add_argument("--peer-rows", type=int, default=50_000)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loadtape-bench-"))
    results: dict[str, object] = {}
    try:
        recs = template_records(args.write_rows)
        for mode in ("inline", "process"):
            w = bench_write(work / f"w-{mode}", recs, compaction=mode)
            results[f"write_loadtape_{mode}"] = w
            print(
                f"write ({mode:7} compaction): {w['records_per_s']:8,.0f} rec/s end to end, "
                f"appends {w['appends_per_s']:8,.0f} rec/s; CPU/rec writer "
                f"{w['writer_cpu_us_per_record']:.1f} us + compactor "
                f"{w['compactor_cpu_us_per_record']:.1f} us; {w['parts']} parts, "
                f"{w['bytes_on_disk'] / 1e6:.1f} MB"
            )
        peer_recs = recs[: args.peer_rows]
        pw = bench_mitmproxy_writer(work / "flows.mitm", peer_recs)
        results["write_mitmproxy_flowwriter"] = pw
        lt_small = bench_write(work / "w2", peer_recs)
        results["write_loadtape_same_n_as_peer"] = lt_small
        print(
            f"write peer: mitmproxy FlowWriter {pw['records_per_s']:,.0f} rec/s vs loadtape "
            f"{lt_small['records_per_s']:,.0f} rec/s (inline) on the same {pw['records']:,} "
            f"records -> {lt_small['records_per_s'] / pw['records_per_s']:.2f}x; on disk "
            f"{pw['bytes_on_disk'] / 1e6:.1f} MB vs "
            f"{lt_small['bytes_on_disk'] / 1e6:.1f} MB"
        )
        del recs, peer_recs
        big = work / "r"
        t0 = time.perf_counter()
        bench_write(big, template_records(args.rows), compaction="process")
        print(f"(built a {args.rows:,}-row capture in {time.perf_counter() - t0:.1f} s)")
        for mode in ("loadtape", "loadtape-all", "pyarrow-whole"):
            r = bench_read(big, mode)
            results[f"read_{mode}"] = r
            print(
                f"read {mode:<14} {r['rows_per_s']:>10,.0f} rows/s  {r['seconds']:6.1f} s  "
                f"peak RSS {r['peak_rss_mb']:7.1f} MB "
                f"(growth {r['rss_growth_mb']:.1f} MB)"
            )
        a, b = results["read_loadtape"], results["read_pyarrow-whole"]
        assert isinstance(a, dict) and isinstance(b, dict)
        print(
            f"read ratio loadtape/pyarrow-whole: speed {a['rows_per_s'] / b['rows_per_s']:.2f}x, "
            f"peak RSS {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x"
        )
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "capture_format.json").write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
