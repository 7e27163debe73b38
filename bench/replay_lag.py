"""Benchmark: open-loop send lag (actual send - intended send) at 1k, 2k and 5k req/s.

A capture of evenly spaced GETs at each rate is replayed at 1x against nginx on loopback.
Lag is read from results.parquet for every request: p50, p99, max, plus the achieved rate and
the CPU the replay used.

Peer, in the same run: the common naive approach (no peer tool with an open loop and send-time
records is packaged for this machine: no wrk2, no vegeta): one asyncio task per shot, each
sleeping until its absolute due time, then sending with aiohttp, on uvloop. Its lag is measured
the same way.

The floor, in the same run: bench/floor.c, a minimal C open-loop sender (one thread, epoll, an
absolute timerfd, keep-alive connections, no records), built with the machine's C compiler. Its
CPU per request is what a request with its own wakeup costs on this machine before any work of
ours; loadtape's is given as a multiple of it. (Skipped when there is no C compiler.)

CPU per request is given two ways for both tools: gross (the whole process: start-up, planning,
the run, the report) and net of start-up (the same tool's CPU for a one-request run is
subtracted, as bench/replay_throughput.py does). The floor under both on this machine is printed
first: the CPU and lateness of one timerfd wakeup of an idle event loop (a VM makes wakeups dear).
Goals (issue 19): lag p99 <= 0.5 ms at 5k req/s and <= 1 ms at 10k.

    python bench/replay_lag.py [--seconds 10] [--rates 2000,5000,10000] [--slacks 0,500us]
        [--clients auto,fast] [--rounds 3] [--live]

--clients runs loadtape with each `--client` (default: auto, which is the compiled sender where
it is built; `fast` is the Python sender). A slack other than 0 is run with the Python sender
only (the compiled one sends each shot at its own instant).

--slacks runs loadtape once per `--send-slack` value at each rate (default 0 only: each shot at
its instant), each beside the same naive run: what a slack saves in CPU and costs in lag.
--rounds runs each (every slack value and the naive peer) that many times, interleaved and in a
rotated order, and prints each figure's median: on a shared host one run of each is not enough
to tell a change from the host's noise.

--live adds a third run per rate: loadtape with `--metrics-listen` while this process scrapes
/metrics every second, as Prometheus would: what watching a run costs it. (`--live` serves the
same observer's numbers as a page, and at the end renders the HTML report once: about 2 s of
CPU after the last request, outside the schedule.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _host import HostWatch, build_c  # noqa: E402
from _targets import Nginx, paced_gets  # noqa: E402
from replay_throughput import measured  # noqa: E402

BIN = Path(sys.executable).parent

NAIVE = textwrap.dedent(
    """
    import asyncio, sys, time, json
    import aiohttp, uvloop
    url, rate, n, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    lags = []
    async def one(session, due):
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        lags.append(time.monotonic() - due)
        try:
            async with session.get(url) as r:
                await r.read()
        except Exception:
            pass
    async def main():
        conn = aiohttp.TCPConnector(limit=1000)
        async with aiohttp.ClientSession(connector=conn) as s:
            start = time.monotonic() + 0.5
            await asyncio.gather(*(one(s, start + i / rate) for i in range(n)))
    uvloop.run(main())
    json.dump(lags, open(out, "w"))
    """
)

WAKEUP = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import uvloop
    sys.path.insert(0, sys.argv[1])
    from replay.timer import PreciseTimer
    n, gap = 5000, 200_000
    async def main():
        loop = asyncio.get_running_loop()
        done, late, st = loop.create_future(), [], {"i": 0}
        start = time.monotonic_ns() + 10_000_000
        def fire():
            late.append(time.monotonic_ns() - (start + st["i"] * gap))
            st["i"] += 1
            if st["i"] >= n:
                done.set_result(None)
            else:
                timer.arm(start + st["i"] * gap)
        timer = PreciseTimer.create(loop, fire)
        timer.arm(start)
        c0 = time.process_time()
        await done
        late.sort()
        print(json.dumps([(time.process_time() - c0) / n * 1e6, late[n // 2] / 1e3, late[n * 99 // 100] / 1e3]))
        timer.close()
    uvloop.run(main())
    """
)


def stats(lag_ms: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(lag_ms, 50)),
        "p99_ms": float(np.percentile(lag_ms, 99)),
        "max_ms": float(lag_ms.max()),
    }


def watched_run(cap: Path, target: str, run: Path, n: int) -> dict[str, float]:
    """loadtape with --metrics-listen on a free port, scraped every second while it runs."""
    import socket
    import threading
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = threading.Event()
    scrapes = [0]

    def scrape() -> None:
        while not done.is_set():
            for path in ("/metrics",):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                        r.read()
                    scrapes[0] += 1
                except OSError:
                    pass
            done.wait(1.0)

    th = threading.Thread(target=scrape, daemon=True)
    th.start()
    try:
        _, _, cpu = measured(
            [str(BIN / "loadtape"), "replay", str(cap), "--target", target, "--out", str(run),
             "-q", "--metrics-listen", f"127.0.0.1:{port}"]
        )  # fmt: skip
    finally:
        done.set()
        th.join(5)
    t = pq.read_table(run / "results.parquet", columns=["intended_ns", "sent_ns"])
    lag = (t["sent_ns"].to_numpy() - t["intended_ns"].to_numpy()) / 1e6
    return {**stats(lag), "cpu_us_per_req": cpu / n * 1e6, "scrapes": scrapes[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="2000,5000,10000")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--live", action="store_true", help="also run with --live, scraped")
    ap.add_argument("--slacks", default="0", help="--send-slack values for loadtape, e.g. 0,500us")
    ap.add_argument(
        "--clients", default="auto", help="--client values for loadtape, e.g. auto,fast"
    )
    ap.add_argument("--rounds", type=int, default=1, help="runs of each, interleaved; medians")
    args = ap.parse_args()
    slacks = [
        (c, v)
        for c in args.clients.split(",")
        for v in args.slacks.split(",")
        if v == "0" or c in ("fast", "aiohttp")
    ]
    host = HostWatch()
    work = Path(tempfile.mkdtemp(prefix="loadtape-lag-"))
    results: dict[str, dict[str, dict[str, float]]] = {}
    floor = build_c("floor.c", work)
    wake = json.loads(
        measured([sys.executable, "-c", WAKEUP, str(ROOT)])[0].strip().splitlines()[-1]
    )
    print(
        f"floor: one timerfd wakeup of an idle uvloop costs {wake[0]:.0f} us CPU and comes "
        f"{wake[1]:.0f} us late at p50, {wake[2]:.0f} us at p99",
        flush=True,
    )
    results["wakeup"] = {
        "timerfd": dict(zip(("cpu_us", "late_p50_us", "late_p99_us"), wake, strict=True))
    }
    try:
        with Nginx(workers=1) as nginx:
            one = paced_gets(work / "one", 1, 1, "/lag")
            lt_start = measured(
                [str(BIN / "loadtape"), "replay", str(one), "--target", nginx.url,
                 "--out", str(work / "one-run"), "-q"]
            )[2]  # fmt: skip
            naive_start = measured(
                [sys.executable, "-c", NAIVE, f"{nginx.url}/lag", "1", "1", str(work / "n1")]
            )[2]
            for rate in (int(r) for r in args.rates.split(",")):
                steal0 = host.steal()
                n = int(rate * args.seconds)
                cap = paced_gets(work / f"cap{rate}", rate, n, "/lag")
                by_slack: dict[tuple[str, str], list[dict[str, float]]] = {v: [] for v in slacks}
                naive_runs: list[dict[str, float]] = []
                floor_runs: list[dict[str, float]] = []
                for rnd in range(args.rounds):
                    variants = [*slacks, "naive", *(["floor"] if floor else [])]
                    k = rnd % len(variants)
                    for v in variants[k:] + variants[:k]:  # rotated: none always goes first
                        if v == "naive":
                            naive_runs.append(_naive(nginx.url, rate, n, work, naive_start))
                        elif v == "floor":
                            assert floor is not None
                            floor_runs.append(_floor(floor, nginx.url, rate, n))
                        else:
                            by_slack[v].append(_loadtape(cap, nginx.url, v, work, n, lt_start))
                naive = _median(naive_runs)
                results[str(rate)] = {
                    **{_label(v, "_"): _median(runs) for v, runs in by_slack.items()},
                    "naive_task_per_shot": naive,
                    **({"c_floor": _median(floor_runs)} if floor_runs else {}),
                    "rounds": {
                        **{_label(v, "_"): runs for v, runs in by_slack.items()},
                        "naive_task_per_shot": naive_runs,
                        "c_floor": floor_runs,
                    },
                    "host_steal_s": round(host.steal() - steal0, 2),
                }
                if args.live:
                    live = watched_run(cap, nginx.url, work / f"live{rate}", n)
                    results[str(rate)]["loadtape_live"] = live
                    print(
                        f"{rate:5d} req/s  loadtape --metrics-listen, scraped every 1 s: lag p50 "
                        f"{live['p50_ms']:.3f} p99 {live['p99_ms']:.3f} max {live['max_ms']:.1f} "
                        f"ms, {live['cpu_us_per_req']:.0f} us CPU/req, {live['scrapes']} scrapes",
                        flush=True,
                    )
                if args.rounds > 1:
                    print(f"{rate:5d} req/s  medians of {args.rounds} interleaved rounds:")
                for slack, runs in by_slack.items():
                    _line(rate, slack, _median(runs), naive, results[str(rate)]["host_steal_s"])
                if floor_runs:
                    f = _median(floor_runs)
                    lt = _median(by_slack[slacks[0]])
                    print(
                        f"{rate:5d} req/s  C floor: lag p50 {f['p50_ms']:.3f} p99 {f['p99_ms']:.3f} "
                        f"ms, CPU/req {f['net_cpu_us_per_req']:.0f} us | loadtape/floor: net CPU "
                        f"{lt['net_cpu_us_per_req'] / max(f['net_cpu_us_per_req'], 1e-6):.2f}x",
                        flush=True,
                    )
        print(host.line())
        results["host"] = {"steal_s": {"total": host.steal()}}
        out = ROOT / args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "replay_lag.json").write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _label(variant: tuple[str, str], sep: str = " ") -> str:
    """loadtape's name in the output: with its --client unless auto, its slack unless 0."""
    client, slack = variant
    dash = "--" if sep == " " else ""
    return (
        "loadtape"
        + ("" if client == "auto" else f"{sep}{dash}client{sep}{client}")
        + ("" if slack == "0" else f"{sep}{dash}send{'-' if sep == ' ' else '_'}slack{sep}{slack}")
    )


def _loadtape(
    cap: Path, target: str, variant: tuple[str, str], work: Path, n: int, start_cpu: float
) -> dict[str, float]:
    run = Path(tempfile.mkdtemp(dir=work))
    client, slack = variant
    _, _, cpu = measured(
        [str(BIN / "loadtape"), "replay", str(cap), "--target", target, "--out", str(run / "r"),
         "-q", "--send-slack", slack, "--client", client]
    )  # fmt: skip
    doc = json.loads((run / "r" / "run.json").read_text())
    t = pq.read_table(run / "r" / "results.parquet", columns=["intended_ns", "sent_ns"])
    lag = (t["sent_ns"].to_numpy() - t["intended_ns"].to_numpy()) / 1e6
    shutil.rmtree(run, ignore_errors=True)
    return {
        **stats(lag),
        "achieved_rate": doc["achieved_rate"],
        "failed": doc["counts"]["failed"],
        "cpu_us_per_req": cpu / n * 1e6,
        "net_cpu_us_per_req": (cpu - start_cpu) / n * 1e6,
    }


def _floor(binary: Path, target: str, rate: int, n: int) -> dict[str, float]:
    """The C floor's own figures: CPU from its first send (no start-up to net out)."""
    port = target.rsplit(":", 1)[1]
    out = subprocess.run(
        [str(binary), "127.0.0.1", port, "/lag", str(rate), str(n)],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    cpu, p50, p99 = (float(x) for x in out.split())
    return {"p50_ms": p50 / 1e3, "p99_ms": p99 / 1e3, "net_cpu_us_per_req": cpu}


def _naive(target: str, rate: int, n: int, work: Path, start_cpu: float) -> dict[str, float]:
    lag_file = work / f"naive{rate}.json"
    _, _, cpu = measured(
        [sys.executable, "-c", NAIVE, f"{target}/lag", str(rate), str(n), str(lag_file)]
    )
    lag = np.asarray(json.loads(lag_file.read_text())) * 1e3
    return {
        **stats(lag),
        "cpu_us_per_req": cpu / n * 1e6,
        "net_cpu_us_per_req": (cpu - start_cpu) / n * 1e6,
    }


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds (one round: that run)."""
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]}


def _line(
    rate: int,
    variant: tuple[str, str],
    lt: dict[str, float],
    naive: dict[str, float],
    steal: float,
) -> None:
    tag = _label(variant)
    print(
        f"{rate:5d} req/s  {tag}: lag p50 {lt['p50_ms']:.3f} p99 {lt['p99_ms']:.3f} max {lt['max_ms']:.1f} ms, "
        f"achieved {lt['achieved_rate']:.0f}/s, {lt['failed']:.0f} failed, CPU/req {lt['cpu_us_per_req']:.0f} us "
        f"({lt['net_cpu_us_per_req']:.0f} net) | "
        f"naive task-per-shot: p50 {naive['p50_ms']:.3f} p99 {naive['p99_ms']:.3f} max {naive['max_ms']:.1f} ms, "
        f"CPU/req {naive['cpu_us_per_req']:.0f} us ({naive['net_cpu_us_per_req']:.0f} net) | "
        f"naive/loadtape: p99 {naive['p99_ms'] / max(lt['p99_ms'], 1e-6):.1f}x, "
        f"net CPU {naive['net_cpu_us_per_req'] / max(lt['net_cpu_us_per_req'], 1e-6):.2f}x"
        f" | host steal {steal:.1f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
