"""Benchmark: closed-loop throughput and CPU per request, against peers, in one run.

Target: nginx on loopback returning a small JSON body (one worker). Each tool sends small GETs
over C keep-alive connections as fast as it can:

- loadtape replay --concurrency C (fast sender), and --client aiohttp (plain aiohttp);
- hey -c C, wrk -t1 -c C (C, Go: the fast references);
- Locust FastHttpUser with C users (installed into bench/out/peers-venv on first use).

CPU per request = (user + sys CPU of the tool's process tree) / requests, net of start-up: the
same tool's CPU for a one-request run is subtracted. Goals (issue 4): loadtape <= 50 us per
request, >= 2x Locust's throughput, <= 1.5x hey's CPU per request.

    python bench/replay_throughput.py [--requests 100000] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import re
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

from _host import HostWatch  # noqa: E402
from _targets import Nginx  # noqa: E402

from captures.testing import T0_NS, http_record, write_capture  # noqa: E402

BIN = Path(sys.executable).parent
PEERS = ROOT / "bench" / "out" / "peers-venv"

LOCUSTFILE = """
from locust import FastHttpUser, constant, task

class U(FastHttpUser):
    wait_time = constant(0)

    @task
    def get(self):
        self.client.get("/bench")
"""


def measured(argv: list[str], cwd: Path | None = None) -> tuple[str, float, float]:
    """Run a command; return (output, wall seconds, CPU seconds of it and its children)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:  # a failed run's CPU is its start-up: it must not pass as a figure
        raise SystemExit(f"{' '.join(argv[:2])} exited {proc.returncode}: {proc.stdout[-400:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout, wall, cpu


def ensure_locust() -> Path | None:
    py = PEERS / "bin" / "python"
    if not py.exists():
        print("(installing locust into bench/out/peers-venv)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "locust"], capture_output=True, text=True
        )
        if r.returncode != 0:
            print("locust could not be installed; skipping it:", r.stderr[-300:])
            return None
    return PEERS / "bin" / "locust"


def tool_runs(
    url: str, cap: Path, work: Path, n: int, c: int, seconds: float
) -> dict[str, tuple[list[str], object]]:
    """name -> (argv for a full run, argv for a one-request run or None, parser)."""
    lt = [str(BIN / "loadtape"), "replay", str(cap), "--target", url, "--concurrency", str(c), "-q"]
    runs: dict[str, tuple[list[str], object]] = {
        "loadtape": (
            [*lt, "--requests", str(n), "--out", str(work / "lt"), "--force"],  # each round
            [*lt, "--requests", "1", "--out", str(work / "lt1")],
        ),
        "loadtape-aiohttp": (
            [
                *lt,
                "--client",
                "aiohttp",
                "--requests",
                str(n),
                "--out",
                str(work / "la"),
                "--force",
            ],
            [*lt, "--client", "aiohttp", "--requests", "1", "--out", str(work / "la1")],
        ),
    }
    if shutil.which("hey"):
        runs["hey"] = (
            ["hey", "-n", str(n), "-c", str(c), f"{url}/bench"],
            ["hey", "-n", "1", "-c", "1", f"{url}/bench"],
        )
    if shutil.which("wrk"):
        runs["wrk"] = (
            ["wrk", "-t1", f"-c{c}", f"-d{seconds:g}s", f"{url}/bench"],
            None,  # wrk runs for whole seconds: no short run; its start-up is a few ms
        )
    locust = ensure_locust()
    if locust is not None:
        lf = work / "locustfile.py"
        lf.write_text(LOCUSTFILE)
        base = [
            str(locust),
            "-f",
            str(lf),
            "--headless",
            "-u",
            str(c),
            "-r",
            str(c),
            "--host",
            url,
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--csv",
            str(work / "locust"),
        ]
        runs["locust"] = (
            [*base, "-t", f"{seconds:g}s"],
            [*base[:5], "1", "-r", "1", *base[8:], "-t", "1s"],  # one user, same host
        )
    return runs


def count_requests(name: str, out: str, work: Path, n: int) -> int:
    if name.startswith("loadtape"):
        run_dir = work / ("lt" if name == "loadtape" else "la")
        doc = json.loads((run_dir / "run.json").read_text())
        assert doc["counts"]["failed"] == 0, doc["counts"]
        return int(doc["counts"]["ok"])
    if name == "hey":
        m = re.search(r"\[200\]\s+(\d+) responses", out)
        return int(m.group(1)) if m else 0
    if name == "wrk":
        m = re.search(r"(\d+) requests in", out)
        return int(m.group(1)) if m else 0
    if name == "locust":
        stats = (work / "locust_stats.csv").read_text().splitlines()
        agg = [ln for ln in stats if ",Aggregated," in ln]
        return int(agg[0].split(",")[2]) if agg else 0
    raise ValueError(name)


def own_rate(name: str, out: str, work: Path, n: int, seconds: float) -> float:
    """Each tool's own measure of its sending rate (start-up excluded)."""
    if name.startswith("loadtape"):
        doc = json.loads((work / ("lt" if name == "loadtape" else "la") / "run.json").read_text())
        return float(doc["achieved_rate"])
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:  # hey and wrk print it
        return float(m.group(1))
    return n / seconds  # locust: its run time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="for duration-based tools")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    host = HostWatch()
    work = Path(tempfile.mkdtemp(prefix="loadtape-thr-"))
    cap = write_capture(
        work / "cap", [http_record(start_ns=T0_NS + i * 1000, path="/bench") for i in range(1000)]
    )
    results: dict[str, list[dict[str, float]]] = {}
    try:
        with Nginx(workers=1) as nginx:
            runs = tool_runs(nginx.url, cap, work, args.requests, args.concurrency, args.seconds)
            startup: dict[str, float] = {}
            for name, (_, small) in runs.items():
                startup[name] = measured(small)[2] if small else 0.0  # type: ignore[arg-type]
            for rnd in range(args.rounds):
                for name, (full, _) in runs.items():
                    out, wall, cpu = measured(full)  # type: ignore[arg-type]
                    n = count_requests(name, out, work, args.requests)
                    net = max(cpu - startup[name], 0.0)
                    row = {
                        "requests": n,
                        "wall_s": wall,
                        "rps": own_rate(name, out, work, n, args.seconds),
                        "cpu_s": cpu,
                        "cpu_us_per_req": net / n * 1e6 if n else float("nan"),
                    }
                    results.setdefault(name, []).append(row)
                    print(
                        f"round {rnd} {name:17} {row['requests']:8d} req  {row['rps']:8.0f} req/s  "
                        f"{row['cpu_us_per_req']:6.1f} us CPU/req (start-up {startup[name]:.2f} s)",
                        flush=True,
                    )
        print()
        med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in results.items()}
        lt = med["loadtape"]
        for name, m in med.items():
            print(
                f"{name:17} median {m['rps']:8.0f} req/s  {m['cpu_us_per_req']:6.1f} us CPU/req  "
                f"loadtape/this: throughput {lt['rps'] / m['rps']:.2f}x, CPU/req {lt['cpu_us_per_req'] / m['cpu_us_per_req']:.2f}x"
            )
        print(host.line())
        out_dir = ROOT / args.out
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "replay_throughput.json").write_text(
            json.dumps(
                {
                    "runs": results,
                    "medians": med,
                    "startup_cpu_s": startup,
                    "host_steal_s": host.steal(),
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
