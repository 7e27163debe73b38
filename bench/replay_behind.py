"""Benchmark: a run behind its schedule. Many shots due at once, through the real dispatcher and
fast client, against nginx on loopback, with a pool of a few warm connections: how many new
connections the run opens, when its last request is written (handed to the kernel: a request on
a new connection is stamped sent when it is submitted, and written once connected), and the
loop's CPU.

A run falls behind for a few milliseconds now and then (a long step, the VM not scheduling it);
what matters is that catching up does not cost more than the delay did. Each connection the
run opens costs ~80 us of the loop's CPU more than reusing one.

Peer, in the same run: the same dispatcher with no bound on sends or new connections per turn
of the loop (what it did before: every due shot sent before any response was read).

    python bench/replay_behind.py [--due 300] [--warm 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import uvloop  # noqa: E402
from _targets import Nginx  # noqa: E402

from replay.dispatch import DIAL_BATCH, SEND_BATCH, Dispatcher  # noqa: E402
from replay.plan import Shot  # noqa: E402
from replay.planrows import Request  # noqa: E402
from replay.rewrite import Rewriter  # noqa: E402
from replay.schedule import Scheduler  # noqa: E402
from replay.send import client as fast  # noqa: E402
from replay.send.client import FastClient  # noqa: E402
from replay.send.outcome import Outcome  # noqa: E402
from replay.targets import parse_target  # noqa: E402

UNBOUNDED = 1 << 30
WRITTEN: list[int] = []  # when each request's bytes were handed to the kernel
_start_at = fast._Conn.start_at


def _stamped(conn: Any, req: Any, done: Any, sent_ns: int) -> None:
    WRITTEN.append(time.monotonic_ns())  # (a new connection's request is stamped sent at
    _start_at(conn, req, done, sent_ns)  # submit; its bytes go once it has connected)


fast._Conn.start_at = _stamped  # type: ignore[method-assign]


class Results:
    def add(self, shot: Any, prepared: Any, intended: int, out: Outcome) -> None:
        pass


async def behind(url: str, due: int, warm: int, send_batch: int, dial_batch: int) -> dict[str, Any]:
    target = parse_target(url)
    req = Rewriter(target).prepare(Request("GET", "/behind", None, [], None))
    client = FastClient(target, timeout=10)
    if warm:
        left, ready = [warm], asyncio.get_running_loop().create_future()

        def one(out: Outcome) -> None:
            left[0] -= 1
            if not left[0]:
                ready.set_result(None)

        for _ in range(warm):
            client.submit(req, one)
        await ready
    before = client.connects
    WRITTEN.clear()
    shots = [
        Shot(offset_ns=0, seq=i, request=Request("GET", "/behind", None, [], None))
        for i in range(due)
    ]
    disp = Dispatcher(
        Scheduler(shots, max_in_flight=1000),
        lambda s: req,
        client,
        Results(),
        send_batch=send_batch,
        dial_batch=dial_batch,
    )
    cpu = time.thread_time()
    await asyncio.wait_for(disp.run(), 30)
    cpu = time.thread_time() - cpu
    await client.close()
    at = sorted(WRITTEN)
    return {
        "new_connections": client.connects - before,
        "last_sent_ms": (at[-1] - disp.start) / 1e6,
        "p50_sent_ms": (at[len(at) // 2] - disp.start) / 1e6,
        "loop_cpu_ms": cpu * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--due", type=int, default=300)
    ap.add_argument("--warm", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    ways = {"loadtape": (SEND_BATCH, DIAL_BATCH), "unbounded": (UNBOUNDED, UNBOUNDED)}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ways}
    with Nginx(workers=1) as ng:
        for r in range(args.rounds):  # interleaved
            for name, (sb, db) in ways.items():
                res = uvloop.run(behind(ng.url, args.due, args.warm, sb, db))
                runs[name].append(res)
                print(
                    f"round {r} {name:9s}: {res['new_connections']:4d} new connections, "
                    f"last written +{res['last_sent_ms']:.2f} ms, loop CPU {res['loop_cpu_ms']:.1f} ms"
                )
    summary = {}
    for name, rs in runs.items():
        med = {k: sorted(x[k] for x in rs)[len(rs) // 2] for k in rs[0]}
        summary[name] = med
        print(
            f"{name:9s} median: {med['new_connections']} new connections, last written "
            f"+{med['last_sent_ms']:.2f} ms (p50 +{med['p50_sent_ms']:.2f}), "
            f"loop CPU {med['loop_cpu_ms']:.1f} ms"
        )
    a, b = summary["loadtape"], summary["unbounded"]
    print(
        f"loadtape/unbounded: connections {a['new_connections'] / max(b['new_connections'], 1):.2f}x, "
        f"loop CPU {a['loop_cpu_ms'] / b['loop_cpu_ms']:.2f}x"
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "replay_behind.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
