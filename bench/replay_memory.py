"""Benchmark: a replay's memory, over a long run and with large requests.

Two workloads against nginx on loopback, each replay in a fresh process whose resident memory
is sampled four times a second:

- soak: evenly spaced GETs at `--rate` for `--seconds`; RSS 10 s in, at the end, and the
  growth in MB a minute after the first 10 s (a run must not grow with its length: a day-long
  soak at 0.5 MB a second is 43 GB);
- bodies: `--posts` POSTs of `--kb` KB distinct bodies at `--post-rate`; peak RSS (the plan
  buffer's bound is 256 MB of requests);
- answers: `--downloads` GETs due at once of a `--mb` MB file; peak RSS (the compiled sender
  holds a part of about 1 MB a connection and 16 MB of parts not yet taken).

Each runs with every sender in `--clients`, and with `--tree DIR` from another checkout too
(the commit before a change, say), for a ratio in one run.

    python bench/replay_memory.py [--seconds 60] [--rate 1000] [--posts 10000] [--kb 50]
        [--post-rate 2000] [--downloads 8] [--mb 200] [--clients auto,fast] [--tree DIR]
"""

from __future__ import annotations

import argparse
import os
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


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sampled(
    tree: Path, cap: Path, target: str, out: Path, client: str
) -> list[tuple[float, float]]:
    """(seconds, RSS MB) of one replay, four times a second until it exits."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-c", "import cli; cli.main()", "replay", str(cap),
           "--target", target, "--out", str(out), "-q", "--client", client]  # fmt: skip
    p = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    t0, samples = time.monotonic(), []
    while p.poll() is None:
        mb = rss_mb(p.pid)
        if mb:
            samples.append((time.monotonic() - t0, mb))
        time.sleep(0.25)
    err = p.stderr.read() if p.stderr is not None else ""
    if p.returncode != 0:
        raise SystemExit(f"replay from {tree} exited {p.returncode}: {err.strip()[-500:]}")
    return samples


def soak_line(samples: list[tuple[float, float]]) -> str:
    at10 = next((mb for t, mb in samples if t >= 10), samples[0][1])
    t_end, end = samples[-2] if len(samples) > 1 else samples[-1]  # the last is the exit
    per_min = (end - at10) / max(t_end - 10, 1e-9) * 60
    return f"RSS at 10 s {at10:.0f} MB, at {t_end:.0f} s {end:.0f} MB: {per_min:+.1f} MB a minute"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--posts", type=int, default=10_000)
    ap.add_argument("--kb", type=int, default=50)
    ap.add_argument("--post-rate", type=int, default=2000)
    ap.add_argument("--downloads", type=int, default=8)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--clients", default="auto,fast")
    ap.add_argument("--tree", type=Path, action="append", default=[])
    a = ap.parse_args()
    trees = [ROOT, *a.tree]
    host = HostWatch()
    work = Path(tempfile.mkdtemp(prefix="loadtape-mem-"))
    n = int(a.rate * a.seconds)
    soak = write_capture(
        work / "soak",
        (http_record(start_ns=T0_NS + round(i * 1e9 / a.rate), path="/w") for i in range(n)),
    )
    filler = b"lorem ipsum dolor sit amet " * (a.kb * 1024 // 27)
    posts = (
        http_record(
            start_ns=T0_NS + round(i * 1e9 / a.post_rate),
            method="POST",
            path="/w",
            req_body=b"%d " % i + filler,
        )
        for i in range(a.posts)
    )
    bodies = write_capture(work / "bodies", posts)
    runs = iter(range(1_000_000))
    with Nginx(workers=1) as ng:
        big = ng.put("big", a.mb << 20)
        gets = (http_record(start_ns=T0_NS, path=big) for _ in range(a.downloads))
        answers = write_capture(work / "answers", gets)
        for tree in trees:
            for client in a.clients.split(","):
                s = sampled(tree, soak, ng.url, work / f"run{next(runs)}", client)
                print(f"soak {a.rate}/s {a.seconds:g} s, {client}, {tree}: {soak_line(s)}")
                s = sampled(tree, bodies, ng.url, work / f"run{next(runs)}", client)
                print(
                    f"bodies {a.posts} x {a.kb} KB at {a.post_rate}/s, {client}, {tree}: "
                    f"peak RSS {max(mb for _, mb in s):.0f} MB",
                    flush=True,
                )
                s = sampled(tree, answers, ng.url, work / f"run{next(runs)}", client)
                print(
                    f"answers {a.downloads} x {a.mb} MB at once, {client}, {tree}: "
                    f"peak RSS {max(mb for _, mb in s):.0f} MB",
                    flush=True,
                )
    print(host.line())


if __name__ == "__main__":
    main()
