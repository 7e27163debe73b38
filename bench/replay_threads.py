"""Benchmark: where an open-loop request's CPU goes, thread by thread.

The open-loop goal (issue 19: 40 us of CPU a request) is spent by four threads of one replay
process: the event loop's (the main thread: shots handed over, answers measured, the results'
steps), the compiled sender's (`loadtape-wire`: the timed writes and the reads, in C), the plan's
(`loadtape-plan`: reading the capture, planning, preparing requests) and the Parquet writer's
(`loadtape-result`). Each names itself in the OS, and this bench reads each one's CPU from
/proc while a replay of evenly spaced GETs runs against nginx on loopback, at each rate.

CPU per request, by thread: the main thread's is net of start-up (a one-request run's CPU is
subtracted, as bench/replay_lag.py does for the whole process), the others' are their own. The
C floor (bench/floor.c: one thread, a timerfd wakeup per request, keep-alive connections) is
beside them: what a request's two wakeups cost this machine before any work of ours. The
compiled sender's thread is to be read against it.

--spy adds one run at the last rate under `py-spy record --gil` (py-spy from PyPI) and prints,
per Python thread, the functions of ours that held the GIL most (each sample counted to the
innermost function of ours in it, library calls below it included; in % of that thread's
samples): where the Python part of the time went.

    python bench/replay_threads.py [--seconds 5] [--rates 2000,10000] [--rounds 3] [--spy]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pyarrow.parquet as pq  # noqa: E402
from _host import HostWatch, build_c  # noqa: E402
from _targets import Nginx, paced_gets  # noqa: E402
from replay_lag import _floor  # noqa: E402

BIN = Path(sys.executable).parent
ROLES = {"loadtape-wire": "engine (C)", "loadtape-plan": "plan", "loadtape-result": "writer"}
TICK = os.sysconf("SC_CLK_TCK")
OURS = ("replay/", "captures/", "proxy_addons/", "cli.py")


def _replay(cap: Path, target: str, out: Path) -> tuple[dict[str, float], float]:
    """One replay: CPU seconds by thread role (main: the whole process less the others, since
    /proc is sampled until the process exits), and its lag p99 in ms."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        [str(BIN / "loadtape"), "replay", str(cap), "--target", target, "--out", str(out), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen: dict[str, float] = {}  # tid -> CPU seconds, last sample
    role: dict[str, str] = {}
    while proc.poll() is None:
        try:
            tids = os.listdir(f"/proc/{proc.pid}/task")
        except OSError:
            break
        for tid in tids:
            try:
                with open(f"/proc/{proc.pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{proc.pid}/task/{tid}/comm") as f:
                    role[tid] = ROLES.get(f.read().strip(), "other")
            except OSError:
                continue
            seen[tid] = (int(fields[11]) + int(fields[12])) / TICK
        time.sleep(0.05)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"loadtape replay exited {proc.returncode}: {err.decode()[-400:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    by_role: dict[str, float] = collections.defaultdict(float)
    for tid, cpu in seen.items():
        if tid != str(proc.pid):
            by_role[role[tid]] += cpu
    by_role["main (loop)"] = max(0.0, total - sum(by_role.values()))
    t = pq.read_table(out / "results.parquet", columns=["intended_ns", "sent_ns"])
    lag = sorted((t["sent_ns"].to_numpy() - t["intended_ns"].to_numpy()) / 1e6)
    return dict(by_role), float(lag[int(len(lag) * 0.99)]) if lag else 0.0


def _spy(cap: Path, target: str, out: Path) -> None:
    """One run under py-spy --gil: per Python thread, our functions' inclusive share."""
    raw = out.parent / "spy.txt"
    argv = [str(BIN / "loadtape"), "replay", str(cap), "--target", target, "--out", str(out), "-q"]
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(BIN))
    if exe is None:
        print("(--spy: py-spy is not installed: pip install py-spy)")
        return
    spy = [exe, "record", "--gil", "--threads", "-r", "250", "-f", "raw", "-o", str(raw)]
    r = subprocess.run(
        [*spy, "--", *argv],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0 or not raw.exists():
        print(f"(py-spy failed: {r.stderr.strip()[-200:]})")
        return
    threads: collections.Counter[str] = collections.Counter()  # by "thread (TID)"
    names: dict[str, str] = {}
    frames: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        thread, *stack_frames = stack.split(";")
        tid, _, name = thread.partition(": ")  # the name is not on every line
        if name:
            names.setdefault(tid, name)
        threads[tid] += int(n)
        ours = [f for f in stack_frames if f.split(" (", 1)[-1].startswith(OURS)]
        if ours:  # the innermost function of ours, with what it called below it
            frames[tid][ours[-1].split(" (", 1)[0]] += int(n)
    for tid, total in threads.most_common(3):
        if total < 20:  # a thread that hardly held the GIL
            continue
        name = names.get(tid, tid)
        print(f"  py-spy --gil, thread {name}: {total} samples holding the GIL; the innermost")
        print("  function of ours in each, with the libraries it called:")
        for f, n in frames[tid].most_common(14):
            print(f"    {100 * n / total:5.1f}%  {f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rates", default="2000,10000")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved; medians")
    ap.add_argument("--spy", action="store_true", help="a run under py-spy --gil as well")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    host = HostWatch()
    work = Path(tempfile.mkdtemp(prefix="loadtape-threads-"))
    results: dict[str, object] = {}
    try:
        _main(args, work, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(host.line())
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay_threads.json").write_text(json.dumps(results, indent=2))


def _main(args: argparse.Namespace, work: Path, results: dict[str, object]) -> None:
    floor = build_c("floor.c", work)
    with Nginx(workers=1) as nginx:
        one = paced_gets(work / "one", 1, 1, "/lag")
        start = _replay(one, nginx.url, work / "one-run")[0]["main (loop)"]
        print(f"start-up: {start:.2f} s of CPU on the main thread (subtracted below)")
        for rate in (int(r) for r in args.rates.split(",")):
            n = int(rate * args.seconds)
            cap = paced_gets(work / f"cap{rate}", rate, n, "/lag")
            runs: list[dict[str, float]] = []
            floors: list[float] = []
            for k in range(args.rounds):
                by_role, p99 = _replay(cap, nginx.url, work / f"run{rate}-{k}")
                by_role["main (loop)"] -= start
                runs.append({**{r: c / n * 1e6 for r, c in by_role.items()}, "lag_p99_ms": p99})
                if floor is not None:
                    floors.append(_floor(floor, nginx.url, rate, n)["net_cpu_us_per_req"])
            keys = sorted({k for r in runs for k in r} - {"lag_p99_ms"})
            med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
            net = statistics.median(sum(r.get(k, 0.0) for k in keys) for r in runs)
            print(f"{rate} req/s, medians of {args.rounds} runs, CPU a request:")
            for k in sorted(keys, key=lambda k: -med[k]):
                print(f"  {k:14s} {med[k]:6.1f} us")
            lag = statistics.median(r["lag_p99_ms"] for r in runs)
            print(f"  {'all (net)':14s} {net:6.1f} us   lag p99 {lag:.2f} ms")
            if floors:
                print(f"  {'C floor':14s} {statistics.median(floors):6.1f} us (its own process)")
            results[str(rate)] = {"medians_us": med, "net_us": net, "runs": runs, "floor": floors}
            if args.spy and rate == int(args.rates.split(",")[-1]):
                _spy(cap, nginx.url, work / "spy-run")


if __name__ == "__main__":
    main()
