"""Benchmark: bursts on time. Bursts of 32 requests due in the same instant, bodies 10 to 500 KB,
replayed at 10x against nginx on loopback; each request's send error measured on the wire.

tcpdump (`--immediate-mode`, nanosecond stamps) records the first segment of every request on
lo (the kernel stamps it as it passes); the request's path names it. Send error = wire time -
intended send time (both epoch ns). Beside it, each tool's own send stamp (what it records as
its send time) against the same intended time.

Peer, in the same run: the naive sender of bench/replay_lag.py (one asyncio task per request,
sleeping until its absolute due time, aiohttp on uvloop), given the same schedule and body
sizes. Beside them, the C floor (bench/burst_floor.c: one thread, connections opened first, the
heads of a burst written one after another at its instant, nothing else): what sending a burst
costs this machine, the loopback, the target and the capture included, before any tool's work.
Each tool runs twice: on the quiet machine, and with one CPU-bound process competing
for the cores. Goals (issue 19): p99 <= 0.5 ms and max <= 1 ms at 10x quiet; p99 <= 1 ms with
the competing process. The first burst opens the connections (32 connects): figures are given
for the warm bursts (2nd onwards) and for all.

--apart pins nginx and tcpdump to the last CPU and the tool to the others, as a target on its own
host would be. Unpinned, on loopback each write wakes nginx with a sync wakeup, and Linux places
it on the writer's CPU when the writer runs alone there: the tool and nginx then take turns on
one CPU (measured: a burst's head writes ~20 us each instead of ~7). The competing process is
never pinned.

Needs tcpdump and the right to capture on lo (root or CAP_NET_RAW).

    python bench/replay_bursts.py [--bursts 30] [--gap-s 1.0] [--speed 10] [--apart]
        [--rt-priority 10] [--clients auto,fast] [--send-too]

--rt-priority N runs loadtape a second time in each condition with `--rt-priority N` (its
sending thread at SCHED_FIFO; needs root or CAP_SYS_NICE), beside the plain run and the naive
peer. --clients runs loadtape with each `--client` (default auto: the compiled sender where it
is built; fast: the Python sender). --send-too runs the compiled sender a second time with a
burst's heads written by send(), one a request, instead of in one io_uring system call.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _host import HostWatch, build_c  # noqa: E402
from _targets import Nginx, pinned  # noqa: E402

from captures.testing import T0_NS, http_record, write_capture  # noqa: E402

BIN = Path(sys.executable).parent
BURST = 32
NO_URING = {"LOADTAPE_WIRE_URING": "0"}  # the compiled sender's heads by send() (wire_c/uring.h)

NAIVE = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import aiohttp, uvloop
    url, plan_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
    plan = json.load(open(plan_file))  # [offset_ns, path, body size]
    stamps = {}
    async def one(session, mono_due, epoch_due, path, body):
        await asyncio.sleep(max(0.0, (mono_due - time.monotonic_ns()) / 1e9))
        stamps[path] = [epoch_due, time.time_ns(), None]
        try:
            async with session.post(url + path, data=body) as r:
                await r.read()
                stamps[path][2] = r.status
        except Exception:
            pass
    async def main():
        bodies = {n: b"x" * n for _, _, n in plan}
        conn = aiohttp.TCPConnector(limit=1000)
        async with aiohttp.ClientSession(connector=conn) as s:
            lead = 500_000_000
            mono0, epoch0 = time.monotonic_ns() + lead, time.time_ns() + lead
            await asyncio.gather(*(one(s, mono0 + o, epoch0 + o, p, bodies[n]) for o, p, n in plan))
    uvloop.run(main())
    json.dump(stamps, open(out, "w"))
    """
)


def plan(bursts: int, gap_s: float, seed: int = 7) -> list[tuple[int, str, int]]:
    """(recorded offset ns, path, body bytes): `bursts` bursts of 32 at one instant each."""
    rng = random.Random(seed)
    out = []
    for b in range(bursts):
        for i in range(BURST):
            size = int(10_000 * (50 ** rng.random()))  # log-uniform 10 KB .. 500 KB
            out.append((round(b * gap_s * 1e9), f"/b/{b:04d}/{i:02d}", size))
    return out


def wire_stamps(pcap: Path) -> dict[str, int]:
    """First segment's kernel time (epoch ns) of each request, by path, from a nanosecond
    pcap of lo (Ethernet framing)."""
    data = pcap.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    if magic != 0xA1B23C4D:
        raise SystemExit(f"{pcap}: not a nanosecond pcap (magic {magic:#x})")
    first: dict[str, int] = {}
    pos = 24
    while pos + 16 <= len(data):
        sec, nsec, incl, _ = struct.unpack_from("<IIII", data, pos)
        pkt = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        ip = pkt[14:]
        if len(ip) < 20:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4 :]
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload.startswith(b"POST /b/"):
            path = payload.split(b" ", 2)[1].decode()
            first.setdefault(path, sec * 1_000_000_000 + nsec)
    return first


class Sniffer:
    def __init__(self, port: int, out: Path, cpus: set[int] | None = None) -> None:
        self.out = out
        post = "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x504f5354"  # payload starts with "POST"
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-nn", "--immediate-mode", "--time-stamp-precision=nano",
             "-U", "-s", "200", "-w", str(out), f"tcp dst port {port} and {post}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(cpus),
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on lo ...": capturing from here on
        if "listening" not in line:
            raise SystemExit(f"tcpdump did not start: {line.strip()}")

    def stop(self) -> dict[str, int]:
        time.sleep(0.2)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        return wire_stamps(self.out)


def summary(err_ns: np.ndarray) -> dict[str, float]:
    ms = err_ns / 1e6
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def loadtape_run(
    cap: Path,
    url: str,
    port: int,
    out: Path,
    speed: float,
    place: Placement,
    extra: list[str],
    env: dict[str, str] | None = None,
    label: str = "loadtape",
) -> dict[str, object]:
    sniff = Sniffer(port, out.with_suffix(".pcap"), place.target)
    subprocess.run(
        [str(BIN / "loadtape"), "replay", str(cap), "--target", url, "--speed", str(speed),
         "--out", str(out), "-q", *extra],
        check=True,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        preexec_fn=pinned(place.tool),
    )  # fmt: skip
    wire = sniff.stop()
    t = pq.read_table(
        out / "results.parquet", columns=["endpoint", "intended_ns", "sent_ns", "status"]
    )
    rows = list(zip(*(t[c].to_pylist() for c in t.column_names), strict=True))
    run = json.loads((out / "run.json").read_text())
    batched = run["connections"].get("batched", 0)
    wait = (run.get("machine") or {}).get("sender_wait_s")
    waited = "" if wait is None else f"; the sending thread waited {wait * 1e3:.1f} ms for a CPU"
    print(
        f"  ({label}: {batched} of {len(rows)} heads went in io_uring batches{waited})", flush=True
    )
    return {p: (i, s, wire.get(p), st) for p, i, s, st in rows}


def floor_run(
    binary: Path, pl: list[tuple[int, str, int]], port: int, work: Path, speed: float,
    place: Placement,
) -> dict:  # fmt: skip
    """The C floor on the same schedule, measured the same way (its connections open first)."""
    plan_file = work / "floor-plan.txt"
    plan_file.write_text("".join(f"{round(o / speed)} {p} {n}\n" for o, p, n in pl))
    return peer_run([str(binary), "127.0.0.1", str(port)], plan_file, work / "floor", port, place)


def naive_run(
    pl: list[tuple[int, str, int]], url: str, port: int, work: Path, speed: float, place: Placement
) -> dict:
    plan_file = work / "naive-plan.json"
    plan_file.write_text(json.dumps([[round(o / speed), p, n] for o, p, n in pl]))
    return peer_run([sys.executable, "-c", NAIVE, url], plan_file, work / "naive", port, place)


def peer_run(argv: list[str], plan_file: Path, stem: Path, port: int, place: Placement) -> dict:
    """A peer sender run as `argv PLAN OUT` under tcpdump: its own JSON {path: [intended, own
    stamp, status]} with each request's time on the wire."""
    sniff = Sniffer(port, stem.with_suffix(".pcap"), place.target)
    out = stem.with_suffix(".json")
    subprocess.run(
        [*argv, str(plan_file), str(out)], check=True, timeout=600, preexec_fn=pinned(place.tool)
    )
    wire = sniff.stop()
    return {p: (i, s, wire.get(p), st) for p, (i, s, st) in json.loads(out.read_text()).items()}


@dataclass(frozen=True)
class Placement:
    """The CPUs of the target (nginx, tcpdump) and of the tool; None: not pinned."""

    target: set[int] | None = None
    tool: set[int] | None = None

    @classmethod
    def apart(cls) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--apart needs at least 2 CPUs")
        return cls(target={cpus[-1]}, tool=set(cpus[:-1]))


def errors(rows: dict, warm_from: str) -> dict[str, dict[str, float]]:
    out = {}
    for name, keep in (("warm", lambda p: p >= warm_from), ("all", lambda p: True)):
        sel = [(i, s, w, st) for p, (i, s, w, st) in rows.items() if keep(p)]
        wire = np.array([w - i for i, _, w, _ in sel if w is not None], dtype=np.int64)
        own = np.array([s - i for i, s, _, _ in sel], dtype=np.int64)
        out[name] = {
            "wire": summary(wire),
            "own_stamp": summary(own),
            "requests": len(sel),
            "seen_on_wire": len(wire),
            # a send is only on time if the request went out whole: every answer must be 200
            "not_200": sum(st != 200 for *_, st in sel),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bursts", type=int, default=30)
    ap.add_argument("--gap-s", type=float, default=1.0, help="recorded time between bursts")
    ap.add_argument("--speed", type=float, default=10.0)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--worst", type=int, default=0, help="list the N latest requests on the wire")
    ap.add_argument("--apart", action="store_true", help="the target on a CPU of its own")
    ap.add_argument(
        "--rt-priority", type=int, default=0, help="also run loadtape --rt-priority N (root)"
    )
    ap.add_argument(
        "--send-too",
        action="store_true",
        help="also run the compiled sender writing a burst's heads by send(), one a request",
    )
    ap.add_argument(
        "--clients", default="auto", help="--client values for loadtape, e.g. auto,fast"
    )
    args = ap.parse_args()
    place = Placement.apart() if args.apart else Placement()
    host = HostWatch()
    if shutil.which("tcpdump") is None:
        raise SystemExit("this bench needs tcpdump (apt-get install tcpdump)")
    work = Path(tempfile.mkdtemp(prefix="loadtape-bursts-"))
    pl = plan(args.bursts, args.gap_s)
    records = [
        http_record(start_ns=T0_NS + o, method="POST", path=p, req_body=b"x" * n) for o, p, n in pl
    ]
    cap = write_capture(work / "cap", records)
    warm_from = "/b/0001/"
    variants: list[tuple[str, list[str], dict[str, str]]] = []
    for client in args.clients.split(","):
        tag = "" if client == "auto" else f" --client {client}"
        variants.append((f"loadtape{tag}", ["--client", client], {}))
        if args.send_too and client == "auto":
            variants.append((f"loadtape{tag}, send()", ["--client", client], NO_URING))
        if args.rt_priority:
            variants.append(
                (
                    f"loadtape{tag} --rt-priority {args.rt_priority}",
                    ["--client", client, "--rt-priority", str(args.rt_priority)],
                    {},
                )
            )
    report: dict[str, dict] = {}
    try:
        floor = build_c("burst_floor.c", work)
        with Nginx(workers=1, cpus=place.target) as nginx:
            port = int(nginx.url.rsplit(":", 1)[1])
            for load in ("quiet", "one CPU-bound process"):
                hog = None
                if load != "quiet":
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    time.sleep(0.5)
                runs: dict[str, dict] = {}
                try:
                    for tool, extra, env in variants:
                        out = work / f"lt-{len(report)}-{len(runs)}"
                        runs[tool] = loadtape_run(
                            cap, nginx.url, port, out, args.speed, place, extra, env, tool
                        )
                    runs["naive"] = naive_run(pl, nginx.url, port, work, args.speed, place)
                    if floor is not None:
                        runs["C floor"] = floor_run(floor, pl, port, work, args.speed, place)
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                report[load] = {tool: errors(rows, warm_from) for tool, rows in runs.items()}
                for tool, _, _ in variants if args.worst else []:
                    worst = sorted(
                        runs[tool].items(), key=lambda kv: kv[1][0] - max(kv[1][1], kv[1][2] or 0)
                    )
                    print(f"  {load}, {tool}: the latest on the wire")
                    for path, (i, s, w, _) in worst[: args.worst]:
                        print(
                            f"  {path}: own stamp +{(s - i) / 1e3:.0f} us, wire +{(w - i) / 1e3:.0f} us"
                        )
                for tool in runs:
                    for part in ("warm", "all"):
                        e = report[load][tool][part]
                        w, o = e["wire"], e["own_stamp"]
                        print(
                            f"{load:>22s} {tool:16s} {part:4s}: on the wire p50 {w['p50_ms']:.3f} "
                            f"p99 {w['p99_ms']:.3f} max {w['max_ms']:.3f} ms | own stamp p99 "
                            f"{o['p99_ms']:.3f} max {o['max_ms']:.3f} ms | {e['seen_on_wire']}/"
                            f"{e['requests']} seen, {e['not_200']} not 200",
                            flush=True,
                        )
        print(host.line())
        report["host_steal_s"] = host.steal()
        report["placement"] = {
            "target": sorted(place.target or []),
            "tool": sorted(place.tool or []),
        }
        out = ROOT / args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "replay_bursts.json").write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
