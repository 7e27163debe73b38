"""Benchmark: what the capture addon costs the proxy.

The same load through bare mitmdump and through mitmdump with the capture addon, in one run,
against the same upstream (the mock gateway, instant profile, in its own process), alternating
the two a few times. Load comes from wrk (Debian package `wrk`), which is C and cheap, so the
proxy is what saturates.

- throughput: wrk -c 32 closed loop, req/s, for two workloads: small JSON GETs and streamed chat
  completions (SSE, ~10 chunks each);
- peers: bare mitmdump (which buffers whole bodies, SSE streams included, so its clients see no
  token until the stream ends); mitmdump with stream_large_bodies=1 (streams every body, request
  bodies too, as a proxy in front of an LLM gateway must, but holds each response's headers back
  until its first body bytes); and mitmdump with a three-line addon streaming every response from
  its headers on (bench/stream_at_headers.py, mitmproxy's documented way, and what the capture
  addon does for an SSE stream; it buffers request bodies);
- CPU per request of the proxy process and its descendants (all their threads: the capture
  worker and its compactor too), from /proc around the throughput run: steadier than req/s on a
  shared machine;
- added latency: wrk -c 1 (one request at a time, no queueing), p50 and p99: the median over
  --lat-rounds short runs of each proxy, interleaved (the four proxies run side by side, so a slow
  spell of the host's falls on all of them; one long run each swung by a millisecond).

Goals (issue 3, then the performance issue): >= 0.95x throughput for both workloads; for streamed
chat on one connection <= 0.2 ms added at p50 and <= 1 ms at p99.

    python bench/capture_overhead.py [--seconds 8] [--rounds 3] [--lat-rounds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "proxy_addons" / "capture.py"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "bench"))

from _host import HostWatch  # noqa: E402

CHAT_BODY = json.dumps(
    {
        "model": "fast",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": True,
        "max_tokens": 8,
        "stream_options": {"include_usage": True},
    }
)
CHAT_LUA = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{CHAT_BODY}'
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def start_proxy(upstream: str, mode: str, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [
        str(BIN / "mitmdump"),
        "--mode",
        f"reverse:{upstream}",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        "flow_detail=0",
        "--set",
        "termlog_verbosity=warn",
        "--set",
        "connection_strategy=lazy",
    ]
    if mode == "bare-streaming":
        args += ["--set", "stream_large_bodies=1"]  # mitmdump streaming every body, no addon
    if mode == "stream-at-headers":
        args += ["-s", str(Path(__file__).with_name("stream_at_headers.py"))]
    if mode == "addon":
        cap = Path(tempfile.mkdtemp(dir=work))
        args += [
            "-s",
            str(ADDON),
            "--set",
            f"capture_dir={cap / 'cap'}",
            "--set",
            f"capture_redaction_key_file={work / 'key'}",
        ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of its living descendants (the capture worker and its
    compactor), plus those it has reaped: utime + stime + cutime + cstime of each."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:  # gone in between
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / _TCK
    kids: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids.update(int(k) for k in fh.read().split())
    return own + sum(cpu_seconds(k) for k in kids)


def wrk(url: str, conns: int, seconds: float, script: Path | None) -> dict[str, float]:
    args = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", url]
    if script is not None:
        args[1:1] = ["-s", str(script)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        assert m, out
        lat[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, **lat, "requests": n, "non_2xx": float(errors.group(1)) if errors else 0.0}


def _rotated(modes: tuple[str, ...], rnd: int) -> tuple[str, ...]:
    k = rnd % len(modes)
    return modes[k:] + modes[:k]  # no mode always goes first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0, help="each throughput run")
    ap.add_argument("--rounds", type=int, default=3, help="throughput runs of each proxy")
    ap.add_argument("--lat-rounds", type=int, default=8, help="1-connection runs of each proxy")
    ap.add_argument("--lat-seconds", type=float, default=2.0, help="each 1-connection run")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    host = HostWatch()
    if not shutil.which("wrk"):
        sys.exit("capture_overhead: needs wrk (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="loadtape-overhead-"))
    up_port = free_port()
    gw = subprocess.Popen(
        [str(BIN / "loadtape"), "mock-gateway", "--port", str(up_port), "--profile", "instant"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
    try:
        wait_port(up_port)
        upstream = f"http://127.0.0.1:{up_port}"
        lua = work / "chat.lua"
        lua.write_text(CHAT_LUA)
        workloads = {
            "json_get": ("/echo/x?size=256", None),
            "sse_chat": ("/v1/chat/completions", lua),
        }
        modes = ("bare", "bare-streaming", "stream-at-headers", "addon")
        for name, (path, script) in workloads.items():
            # All four proxies run at once, idle but for the one measured, so that the host's
            # slow spells fall on every mode alike (runs interleaved, the order rotated).
            procs = {m: start_proxy(upstream, m, work) for m in modes}
            try:
                urls = {m: f"http://127.0.0.1:{port}{path}" for m, (_, port) in procs.items()}
                for m in modes:
                    wrk(urls[m], 4, 1.0, script)  # warm up
                thr: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
                for rnd in range(args.rounds):
                    for mode in _rotated(modes, rnd):
                        pid = procs[mode][0].pid
                        c0 = cpu_seconds(pid)
                        t = wrk(urls[mode], 32, args.seconds, script)
                        t["cpu_us_per_req"] = (cpu_seconds(pid) - c0) / t["requests"] * 1e6
                        thr[mode].append(t)
                        print(
                            f"{name:9} throughput {rnd} {mode:17}: {t['rps']:7.0f} req/s  "
                            f"{t['cpu_us_per_req']:6.0f} us CPU/req",
                            flush=True,
                        )
                lat: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
                for rnd in range(args.lat_rounds):
                    for mode in _rotated(modes, rnd):
                        lat[mode].append(wrk(urls[mode], 1, args.lat_seconds, script))
                for mode in modes:
                    p50s = [r["p50_ms"] for r in lat[mode]]
                    print(
                        f"{name:9} 1-conn {mode:17}: p50 {statistics.median(p50s):.3f} ms "
                        f"(runs {min(p50s):.2f}-{max(p50s):.2f}), p99 "
                        f"{statistics.median(r['p99_ms'] for r in lat[mode]):.3f} ms",
                        flush=True,
                    )
            finally:
                for proc, _ in procs.values():
                    stop(proc)
            results[name] = {m: {"throughput": thr[m], "latency": lat[m]} for m in modes}
        print()
        summary: dict[str, dict[str, object]] = {}
        for name, by_mode in results.items():
            med = {
                m: {
                    "rps": statistics.median(r["rps"] for r in runs["throughput"]),
                    "cpu_us_per_req": statistics.median(
                        r["cpu_us_per_req"] for r in runs["throughput"]
                    ),
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs["latency"]),
                    "p99_ms": statistics.median(r["p99_ms"] for r in runs["latency"]),
                    "non_2xx": sum(r["non_2xx"] for k in runs for r in runs[k]),
                }
                for m, runs in by_mode.items()
            }
            summary[name] = {"medians": med}
            a = med["addon"]
            for peer in ("bare", "bare-streaming", "stream-at-headers"):
                b = med[peer]
                cmp = {
                    "throughput_ratio": a["rps"] / b["rps"],
                    "cpu_ratio": b["cpu_us_per_req"] / a["cpu_us_per_req"],
                    "added_p50_ms": a["p50_ms"] - b["p50_ms"],
                    "added_p99_ms": a["p99_ms"] - b["p99_ms"],
                }
                summary[name][f"vs_{peer}"] = cmp
                print(
                    f"{name:9} addon vs {peer:17}: {a['rps']:5.0f} vs {b['rps']:5.0f} req/s "
                    f"-> {cmp['throughput_ratio']:.3f}x; CPU/req {a['cpu_us_per_req']:.0f} vs "
                    f"{b['cpu_us_per_req']:.0f} us -> {cmp['cpu_ratio']:.3f}x; added latency "
                    f"p50 {cmp['added_p50_ms']:+.3f} ms, "
                    f"p99 {cmp['added_p99_ms']:+.3f} ms"
                )
        print(host.line())
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "capture_overhead.json").write_text(
            json.dumps(
                {"runs": results, "summary": summary, "host_steal_s": host.steal()}, indent=2
            )
        )
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
