"""Benchmark: open-loop replay on 1 and 2 local workers (`--workers`), in one run.

Evenly spaced GETs at each rate, replayed at 1x against nginx on loopback, once with one worker
and once with two. For each: achieved rate, send lag p50 / p99 / max (read from every
results part), failures, CPU per request. The sustainable rate of a setting is the highest rate
tried whose lag p99 stays <= 5 ms with no failures. Goal (issue 7): two workers >= 1.8x one
worker's sustainable rate, lag p99 <= 5 ms. Note: this machine has 2 cores, shared by nginx,
the workers and the planner threads.

    python bench/replay_workers.py [--seconds 6] [--rates 2000,4000,6000,8000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _host import HostWatch  # noqa: E402
from _targets import Nginx, paced_gets  # noqa: E402
from replay_throughput import measured  # noqa: E402

BIN = Path(sys.executable).parent
LAG_LIMIT_MS = 5.0


def run_level(nginx_url: str, cap: Path, run: Path, workers: int, n: int) -> dict[str, float]:
    _, wall, cpu = measured(
        [
            str(BIN / "loadtape"),
            "replay",
            str(cap),
            "--target",
            nginx_url,
            "--out",
            str(run),
            "--workers",
            str(workers),
            "-q",
        ]
    )
    doc = json.loads((run / "run.json").read_text())
    t = pa.concat_tables(
        pq.read_table(f, columns=["intended_ns", "sent_ns"]) for f in run.glob("results*.parquet")
    )
    lag = (t["sent_ns"].to_numpy() - t["intended_ns"].to_numpy()) / 1e6
    return {
        "sent": doc["counts"]["sent"],
        "failed": doc["counts"]["failed"],
        "achieved_rate": doc["achieved_rate"],
        "lag_p50_ms": float(np.percentile(lag, 50)),
        "lag_p99_ms": float(np.percentile(lag, 99)),
        "lag_max_ms": float(lag.max()),
        "cpu_us_per_req": cpu / n * 1e6,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rates", default="2000,4000,6000,8000")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    host = HostWatch()
    work = Path(tempfile.mkdtemp(prefix="loadtape-workers-"))
    results: dict[str, dict[str, dict[str, float]]] = {}
    sustainable = {1: 0, 2: 0}
    try:
        with Nginx(workers=1) as nginx:
            for rate in (int(r) for r in args.rates.split(",")):
                n = int(rate * args.seconds)
                cap = paced_gets(work / f"cap{rate}", rate, n, "/w")
                row = {}
                for w in (1, 2):
                    r = run_level(nginx.url, cap, work / f"run{rate}-w{w}", w, n)
                    row[f"workers_{w}"] = r
                    if r["lag_p99_ms"] <= LAG_LIMIT_MS and r["failed"] == 0 and r["sent"] == n:
                        sustainable[w] = max(sustainable[w], rate)
                results[str(rate)] = row
                one, two = row["workers_1"], row["workers_2"]
                print(
                    f"{rate:5d} req/s | 1 worker: achieved {one['achieved_rate']:.0f}/s, lag p50 {one['lag_p50_ms']:.2f} "
                    f"p99 {one['lag_p99_ms']:.2f} max {one['lag_max_ms']:.0f} ms, {one['failed']} failed, "
                    f"{one['cpu_us_per_req']:.0f} us CPU/req | 2 workers: achieved {two['achieved_rate']:.0f}/s, "
                    f"lag p50 {two['lag_p50_ms']:.2f} p99 {two['lag_p99_ms']:.2f} max {two['lag_max_ms']:.0f} ms, "
                    f"{two['failed']} failed, {two['cpu_us_per_req']:.0f} us CPU/req",
                    flush=True,
                )
        ratio = sustainable[2] / sustainable[1] if sustainable[1] else float("nan")
        print(
            f"sustainable (lag p99 <= {LAG_LIMIT_MS:g} ms, no failures): 1 worker {sustainable[1]} req/s, "
            f"2 workers {sustainable[2]} req/s, ratio {ratio:.2f}x (of the rates tried)"
        )
        print(host.line())
        out = ROOT / args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "replay_workers.json").write_text(
            json.dumps(
                {"levels": results, "sustainable": sustainable, "host_steal_s": host.steal()},
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
