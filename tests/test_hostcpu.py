"""The machine's CPUs over a run (replay/hostcpu.py): /proc/stat read by table, the record and
its merge across workers, the report's note; and a real replay beside CPU-bound processes,
whose run.json and report say other work was busy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from captures.testing import T0_NS, http_record, write_capture
from replay import hostcpu
from replay.decide.report.text import LATE_MS, machine_note
from replay.hostcpu import CpuSample, machine_use, merged_use, read_stat, sample, shares
from replay.mock.threaded import running_gateway

CLI = [sys.executable, "-c", "import cli; cli.main()"]
STAT = """cpu  100 20 30 800 10 5 5 40 7 0
cpu0 50 10 15 400 5 3 2 20 7 0
cpu1 50 10 15 400 5 2 3 20 0 0
intr 12345 0 0
ctxt 999
"""


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # busy: user + nice + system + irq + softirq; total: the first eight; steal the eighth
        (STAT, (2, 1.60, 10.10, 0.40)),
        ("cpu  100 0 0 100\ncpu0 100 0 0 100\n", (1, 1.0, 2.0, 0.0)),  # an old kernel's four
        ("cpu  1 2 3 4 5 6 7 8\n", (1, 0.19, 0.36, 0.08)),  # no per-CPU lines: one CPU
        ("intr 1 2 3\n", None),
        ("cpu  1 2\n", None),
        ("", None),
    ],
)
def test_proc_stat_is_read_into_seconds(
    text: str, want: tuple[int, float, float, float] | None
) -> None:
    got = read_stat(text, 0.01)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert got[0] == want[0]
    assert got[1:] == pytest.approx(want[1:])


def test_a_sample_needs_proc_stat() -> None:
    assert sample(read=lambda: None) is None
    got = sample(read=lambda: STAT, own=lambda: 1.5)
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert got == CpuSample(2, 160 * tick, 1010 * tick, 40 * tick, 1.5)


def _s(busy: float, total: float, steal: float, own: float, cpus: int = 2) -> CpuSample:
    return CpuSample(cpus, busy, total, steal, own)


def test_the_record_is_the_span_between_two_samples() -> None:
    a, b = _s(100, 1000, 5, 2), _s(106, 1010, 5.5, 3)
    assert machine_use(a, b) == {
        "cpus": 2,
        "span_s": 5.0,
        "busy_s": 6.0,
        "loadtape_s": 1.0,
        "steal_s": 0.5,
    }
    assert machine_use(None, b) is None
    assert machine_use(a, None) is None
    assert machine_use(b, b) is None  # no time passed: nothing to say


def test_workers_share_the_machine_and_add_their_own_time() -> None:
    one = {"cpus": 2, "span_s": 5.0, "busy_s": 6.0, "loadtape_s": 1.0, "steal_s": 0.5}
    two = {"cpus": 2, "span_s": 5.2, "busy_s": 6.4, "loadtape_s": 1.5, "steal_s": 0.4}
    assert merged_use([one, two]) == {
        "cpus": 2,
        "span_s": 5.2,
        "busy_s": 6.4,
        "loadtape_s": 2.5,
        "steal_s": 0.5,
    }
    assert merged_use([]) is None


@pytest.mark.parametrize(
    ("use", "want"),
    [
        ({"cpus": 2, "span_s": 5.0, "busy_s": 6.0, "loadtape_s": 1.0, "steal_s": 0.5}, (0.5, 0.05)),
        ({"cpus": 4, "span_s": 2.0, "busy_s": 1.0, "loadtape_s": 1.2, "steal_s": 0.0}, (0.0, 0.0)),
        ({"cpus": 1, "span_s": 2.0, "busy_s": 9.0, "loadtape_s": 0.0, "steal_s": 3.0}, (1.0, 1.0)),
        ({"cpus": 2, "span_s": 0.5, "busy_s": 1.0, "loadtape_s": 0.1, "steal_s": 0.0}, None),
        (None, None),
    ],
)
def test_shares_of_the_machine(use: dict[str, Any] | None, want: Any) -> None:
    got = shares(use)
    assert got == (pytest.approx(want) if want is not None else None)


def _report(others: float, steal: float, lag_p99: float | None, **run: Any) -> dict[str, Any]:
    use = {
        "cpus": 2,
        "span_s": 10.0,
        "busy_s": 20 * others + 1.0,
        "loadtape_s": 1.0,
        "steal_s": 20 * steal,
    }
    return {
        "run": {"mode": "open", "rt_priority": 0, "machine": use, **run},
        "total": {"metrics": {"lag": {"p99": lag_p99}}},
    }


@pytest.mark.parametrize(
    ("report", "says"),
    [
        (_report(0.1, 0.0, 5.0), None),  # a quiet machine: late sends are not put down to it
        (_report(0.5, 0.0, 0.2), ["other work used 50% of this machine's 2 CPUs"]),
        (
            _report(0.5, 0.0, LATE_MS + 0.5),
            ["other work used 50%", "lag p99 1.50 ms", "--rt-priority 10"],
        ),
        (_report(0.5, 0.0, 3.0, rt_priority=10), ["other work used 50%"]),  # cured already
        (_report(0.5, 0.0, 3.0, mode="closed"), ["other work used 50%"]),  # no schedule
        (_report(0.0, 0.1, 3.0), ["host took 10% of its CPU time (steal)", "--rt-priority"]),
        (_report(0.9, 0.0, 3.0, machine=None), None),  # run before this was recorded
    ],
)
def test_the_report_puts_late_sends_down_to_a_busy_machine(
    report: dict[str, Any], says: list[str] | None
) -> None:
    note = machine_note(report)
    if says is None:
        assert note is None
        return
    assert note is not None
    for part in says:
        assert part in note
    if not any("--rt-priority" in part for part in says):
        assert "--rt-priority" not in note


HOG = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"


@pytest.mark.skipif(hostcpu.sample() is None, reason="no /proc/stat here")
def test_a_replay_beside_cpu_bound_processes_says_they_were_busy(tmp_path: Path) -> None:
    """A real replay (1.5 s of GETs at 200/s against the mock gateway) while CPU-bound processes
    spin on every CPU (at most four): run.json records the machine, and other work's share of
    it is at least half of what the processes could take; the report says so."""
    cpus = os.cpu_count() or 1
    hogs = min(cpus, 4)
    cap = write_capture(
        tmp_path / "cap",
        [http_record(start_ns=T0_NS + i * 5_000_000, path="/echo/x") for i in range(300)],
    )
    with running_gateway(default_profile="instant") as gw:
        spinning = [subprocess.Popen([sys.executable, "-c", HOG.format(s=30)]) for _ in range(hogs)]
        try:
            time.sleep(0.2)
            p = subprocess.run(
                [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(tmp_path / "run")],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            for h in spinning:
                h.kill()
                h.wait()
    assert p.returncode == 0, p.stderr
    use = json.loads((tmp_path / "run" / "run.json").read_text())["machine"]
    assert use["cpus"] == cpus
    assert use["span_s"] >= 1.4
    assert 0 < use["loadtape_s"] < use["busy_s"]
    got = shares(use)
    assert got is not None
    assert got[0] >= 0.5 * hogs / cpus
    if got[0] >= hostcpu.BUSY_SHARE:
        assert f"other work used {got[0]:.0%} of this machine's {cpus} CPUs" in p.stdout


def test_a_quiet_run_records_the_machine_too(tmp_path: Path) -> None:
    """Without the processes: the record is there, the replay's own time within the busy."""
    if hostcpu.sample() is None:
        pytest.skip("no /proc/stat here")
    cap = write_capture(
        tmp_path / "cap",
        [http_record(start_ns=T0_NS + i * 10_000_000, path="/echo/x") for i in range(120)],
    )
    with running_gateway(default_profile="instant") as gw:
        p = subprocess.run(
            [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(tmp_path / "run"), "-q"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 0, p.stderr
    use = json.loads((tmp_path / "run" / "run.json").read_text())["machine"]
    assert set(use) == {"cpus", "span_s", "busy_s", "loadtape_s", "steal_s"}
    assert use["span_s"] >= 1.1
    assert 0 < use["loadtape_s"] <= use["busy_s"] + 0.05
