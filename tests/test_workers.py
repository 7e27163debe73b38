"""--workers N: sharding by table, then whole runs on 1 and 2 worker processes against the mock
gateway (same counts, merged histograms that match the per-request samples, sessions kept in
order), a worker killed mid-run, and Ctrl-C."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from captures import hdr
from captures.testing import T0_NS, chat_record, http_record, write_capture
from replay.api import run_replay
from replay.measure.resultsdir import Results
from replay.mock.threaded import running_gateway
from replay.plan import Shot
from replay.planrows import Request
from replay.timeline import session_shard, sharded
from replay.workload.replaying import ReplayOptions

CLI = [sys.executable, "-c", "import cli; cli.main()"]
MS = 1_000_000


def _shot(seq: int, session: str | None) -> Shot:
    return Shot(offset_ns=seq, seq=seq, request=Request("GET", "/", None, [], b""), session=session)


def test_shards_keep_sessions_whole_and_cover_every_shot() -> None:
    shots = [_shot(i, f"user-{i % 5}" if i % 3 else None) for i in range(300)]
    for n in (1, 2, 3, 4):
        owner: dict[int, int] = {}
        for k in range(n):
            for s in sharded(iter(shots), k, n):
                assert s.seq not in owner  # one shard per shot
                owner[s.seq] = k
        assert sorted(owner) == list(range(300))  # and every shot in one
        by_session: dict[str, set[int]] = {}
        for s in shots:
            if s.session:
                by_session.setdefault(s.session, set()).add(owner[s.seq])
        assert all(len(ks) == 1 for ks in by_session.values())  # a session on one worker
        free = [owner[s.seq] for s in shots if s.session is None]
        assert max(free.count(k) for k in range(n)) - min(free.count(k) for k in range(n)) <= 1
    # stable across processes (not Python's salted hash): crc32(b"user-1") % 4 == 0
    assert session_shard("user-1", 4) == 0


def _capture(tmp_path: Path, n: int = 300, gap_ms: int = 10) -> Path:
    recs = []
    for i in range(n):
        t = T0_NS + i * gap_ms * MS
        if i % 2:
            recs.append(http_record(start_ns=t, path="/echo", query="delay_ms=20"))
        else:
            recs.append(chat_record(start_ns=t, stream=True, max_tokens=4, session_key=f"s{i % 9}"))
    return write_capture(tmp_path / "cap", recs)


def test_two_workers_send_what_one_does(tmp_path: Path) -> None:
    cap = _capture(tmp_path)
    with running_gateway() as gw:
        runs = {}
        for w in (1, 2):
            runs[w] = run_replay(
                ReplayOptions(
                    capture=str(cap),
                    target=gw.url,
                    out=str(tmp_path / f"w{w}"),
                    speed=2,
                    sessions="ordered",
                    workers=w,
                ),
                install_signals=False,
            )
        assert gw.stats.requests == 600
    one, two = runs[1], runs[2]
    assert two.run["workers"]["count"] == 2 and all(
        w["exitcode"] == 0 and w["sent"] > 0 for w in two.run["workers"]["per_worker"]
    )
    assert sorted(p.name for p in (tmp_path / "w2").glob("*-w*.*")) == [
        "histograms-w0.msgpack",
        "histograms-w1.msgpack",
        "results-w0.parquet",
        "results-w1.parquet",
    ]
    for key in ("planned", "sent", "ok", "failed"):
        assert one.run["counts"][key] == two.run["counts"][key], key
    if one.run["machine"] is not None:  # Linux: the machine's CPUs, the workers' time together
        use = two.run["machine"]
        assert use["cpus"] == one.run["machine"]["cpus"] and use["span_s"] > 0
        assert use["loadtape_s"] > 0 and 0 <= use["busy_s"] <= use["cpus"] * use["span_s"]
        each = [w["machine"]["loadtape_s"] for w in two.run["workers"]["per_worker"]]
        assert use["loadtape_s"] == pytest.approx(sum(each))
    assert set(one.metrics.hists) == set(two.metrics.hists)
    for k in one.metrics.hists:
        assert one.metrics.stats[k].count == two.metrics.stats[k].count
    back = Results.open(tmp_path / "w2")  # what report and compare read
    t = back.table(["seq", "session", "intended_ns", "sent_ns", "end_ns", "endpoint"]).to_pydict()
    assert sorted(t["seq"]) == list(range(300))  # every planned shot once, across the parts
    lat = np.array(t["end_ns"]) - np.array(t["intended_ns"])
    h = back.metrics.total()[0]["latency"]
    assert h.total_count == 300
    for p in (50, 90, 99):
        want = np.sort(lat // 1000)[max(int(p / 100 * 300 + 0.5), 1) - 1]
        assert hdr.value_at_percentile(h, p) == pytest.approx(want, rel=1e-3, abs=1)
    # sessions in order: each starts after the previous one of its session ended
    rows = sorted(
        (s, b, e) for s, b, e in zip(t["session"], t["sent_ns"], t["end_ns"], strict=True) if s
    )
    assert len(rows) == 150
    for (s1, _, e1), (s2, b2, _) in itertools.pairwise(rows):
        if s1 == s2:
            assert b2 >= e1
    # the same gateway and plan: latency alike (a 20 ms echo dominates)
    echo = [k for k in one.metrics.hists if k[2] == "/echo"]
    p50 = [hdr.value_at_percentile(r.metrics.merged(echo)[0]["latency"], 50) for r in (one, two)]
    assert p50[1] == pytest.approx(p50[0], rel=0.2)
    assert one.metrics.total()[0]["latency"].total_count == 300


def _children(pid: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = [
            c
            for c in psutil.Process(pid).children(recursive=True)
            if "resource_tracker" not in " ".join(c.cmdline())
        ]
        if len(kids) >= 2:
            return kids
        time.sleep(0.1)
    raise AssertionError("workers did not start")


def _two_workers_running(
    cap: Path, target: str, out: Path
) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    """`loadtape replay --workers 2` in a subprocess, 4 s into its run: it and its workers."""
    argv = [*CLI, "replay", str(cap), "--target", target, "--out", str(out), "--workers", "2", "-q"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kids = _children(proc.pid)
    time.sleep(4)
    return proc, kids


def test_a_dead_worker_is_reported_and_fails_the_run(tmp_path: Path) -> None:
    cap = _capture(tmp_path, n=600, gap_ms=20)  # 12 s of traffic at 1x
    with running_gateway() as gw:
        proc, kids = _two_workers_running(cap, gw.url, tmp_path / "run")
        victim = max(kids, key=lambda c: c.pid)
        victim.kill()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "died (exit code -9)" in err and "Traceback" not in err
    doc = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(doc["worker_failures"]) == 1
    survivor = next(w for w in doc["workers"]["per_worker"] if w["exitcode"] == 0)
    assert survivor["sent"] > 100
    assert doc["counts"]["sent"] >= survivor["sent"]
    report = subprocess.run(
        [*CLI, "report", str(tmp_path / "run")], capture_output=True, text=True, timeout=60
    )
    assert report.returncode == 0 and "requests in" in report.stdout


def test_ctrl_c_stops_every_worker_and_keeps_what_was_measured(tmp_path: Path) -> None:
    cap = _capture(tmp_path, n=600, gap_ms=20)
    with running_gateway() as gw:
        proc, _ = _two_workers_running(cap, gw.url, tmp_path / "run")
        os.kill(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads((tmp_path / "run" / "run.json").read_text())
    assert doc["interrupted"] is True and 0 < doc["counts"]["sent"] < 600
    assert all(w["exitcode"] == 0 for w in doc["workers"]["per_worker"])
    rows = sum(pq.read_metadata(f).num_rows for f in (tmp_path / "run").glob("results-w*.parquet"))
    assert rows == doc["counts"]["sent"]
