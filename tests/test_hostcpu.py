"""The machine's CPUs over a run (replay/hostcpu.py): /proc/stat read by table, the record and
its merge across workers, the report's note; and a real replay beside CPU-bound processes,
whose run.json and report say other work was busy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from captures.testing import T0_NS, http_record, write_capture
from replay import hostcpu
from replay.decide.report.text import LATE_MS, machine_note
from replay.hostcpu import (
    CpuSample,
    machine_use,
    merged_use,
    read_stat,
    sample,
    shares,
    since,
    throttled_s,
    waited_s,
)
from replay.live.exporter import RunObserver
from replay.mock.threaded import running_gateway
from replay.scale.shards import merged_machine, sum_progress
from replay.settings import Progress

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
        # idle: idle + iowait (the fourth and fifth); steal the eighth; the busy fields unread
        (STAT, (2, 8.10, 0.40)),
        ("cpu  100 0 0 100\ncpu0 100 0 0 100\n", (1, 1.0, 0.0)),  # an old kernel's four
        ("cpu  1 2 3 4 5 6 7 8\n", (1, 0.09, 0.08)),  # no per-CPU lines: one CPU
        ("intr 1 2 3\n", None),
        ("cpu  1 2\n", None),
        ("", None),
    ],
)
def test_proc_stat_is_read_into_seconds(text: str, want: tuple[int, float, float] | None) -> None:
    got = read_stat(text, 0.01)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert got[0] == want[0]
    assert got[1:] == pytest.approx(want[1:])


def _files(**by_path: str) -> Any:
    return lambda path: by_path.get(path)


def test_a_sample_needs_proc_stat() -> None:
    assert sample(read=_files()) is None
    got = sample(read=_files(**{"/proc/stat": STAT}), own=lambda: 1.5, clock=lambda: 7.0)
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert got == CpuSample(2, 7.0, 810 * tick, 40 * tick, 1.5, None, None)


def test_a_sample_has_the_senders_wait_and_the_cgroups_throttled_time() -> None:
    files = {
        "/proc/stat": STAT,
        "/proc/self/task/11/schedstat": "5000 2500000 7\n",
        "/proc/self/task/12/schedstat": "5000 500000 7\n",
        "/proc/self/cgroup": "0::/pod/replay\n",
        "/sys/fs/cgroup/pod/replay/cpu.stat": "usage_usec 10\nthrottled_usec 250000\n",
    }
    got = sample([11, 12], read=lambda p: files.get(p), own=lambda: 0.0)
    assert got is not None
    assert got.sender_wait_s == pytest.approx(0.003)
    assert got.throttled_s == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("files", "want"),
    [
        ({"/proc/self/task/7/schedstat": "1 2000000000 3"}, 2.0),
        ({"/proc/self/task/7/schedstat": "1 x 3"}, None),
        ({"/proc/self/task/7/schedstat": "1"}, None),
        ({}, None),  # no schedstat: the kernel does not keep it
    ],
)
def test_a_threads_wait_for_a_cpu_is_its_schedstat(files: dict[str, str], want: Any) -> None:
    assert waited_s([7], read=lambda p: files.get(p)) == want


V1 = "2:cpu,cpuacct:/lt\n1:name=systemd:/\n"


@pytest.mark.parametrize(
    ("files", "want"),
    [
        ({"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.stat": "throttled_usec 5\n"}, 5e-6),
        (  # v1: the cpu controller's hierarchy, nanoseconds
            {
                "/proc/self/cgroup": V1,
                "/sys/fs/cgroup/cpu,cpuacct/lt/cpu.stat": "nr_throttled 2\nthrottled_time 3000000\n",
            },
            0.003,
        ),
        (  # hybrid: the unified hierarchy mounted elsewhere; the v1 cpu controller answers
            {
                "/proc/self/cgroup": "0::/\n1:cpu:/\n",
                "/sys/fs/cgroup/cpu/cpu.stat": "throttled_time 0\n",
            },
            0.0,
        ),
        ({"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.stat": "usage_usec 9\n"}, None),
        ({"/proc/self/cgroup": "garbage\n3:memory:/x\n"}, None),
        ({}, None),
    ],
)
def test_the_cgroups_throttled_time(files: dict[str, str], want: float | None) -> None:
    got = throttled_s(read=lambda p: files.get(p))
    assert got == (pytest.approx(want) if want is not None else None)


def _s(
    wall: float,
    idle: float,
    steal: float,
    own: float,
    wait: float | None = None,
    throttled: float | None = None,
) -> CpuSample:
    return CpuSample(2, wall, idle, steal, own, wait, throttled)


def test_the_record_is_the_span_between_two_samples() -> None:
    """Busy: the span's CPU time (2 CPUs x 5 s) less what was idle (3.5 s) or stolen (0.5 s)."""
    a, b = _s(100, 1000, 5, 2, 0.5, 1.0), _s(105, 1003.5, 5.5, 3, 0.75, 1.5)
    assert machine_use(a, b) == {
        "cpus": 2,
        "span_s": 5.0,
        "busy_s": 6.0,
        "loadtape_s": 1.0,
        "steal_s": 0.5,
        "sender_wait_s": 0.25,
        "throttled_s": 0.5,
    }
    unknown = machine_use(_s(100, 1000, 5, 2), _s(105, 1003.5, 5.5, 3, 0.75, 1.5))
    assert unknown is not None
    assert unknown["sender_wait_s"] is None and unknown["throttled_s"] is None
    assert machine_use(None, b) is None
    assert machine_use(a, None) is None
    assert machine_use(b, b) is None  # no time passed: nothing to say
    idle = machine_use(_s(100, 1000, 5, 2), _s(101, 1002.5, 5, 2))  # idle counted past the span
    assert idle is not None and idle["busy_s"] == 0.0


def test_workers_share_the_machine_and_add_their_own_time() -> None:
    one: dict[str, Any] = {"cpus": 2, "span_s": 5.0, "busy_s": 6.0, "loadtape_s": 1.0}
    two: dict[str, Any] = {"cpus": 2, "span_s": 5.2, "busy_s": 6.4, "loadtape_s": 1.5}
    one |= {"steal_s": 0.5, "sender_wait_s": 0.1, "throttled_s": 0.0}
    two |= {"steal_s": 0.4, "sender_wait_s": 0.2, "throttled_s": None}
    assert merged_use([one, two]) == {
        "cpus": 2,
        "span_s": 5.2,
        "busy_s": 6.4,
        "loadtape_s": 2.5,
        "steal_s": 0.5,
        "sender_wait_s": pytest.approx(0.3),
        "throttled_s": 0.0,
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


def _report(
    others: float,
    steal: float,
    lag_p99: float | None,
    wait: float | None = None,
    throttled: float | None = None,
    **run: Any,
) -> dict[str, Any]:
    use = {
        "cpus": 2,
        "span_s": 10.0,
        "busy_s": 20 * others + 1.0,
        "loadtape_s": 1.0,
        "steal_s": 20 * steal,
        "sender_wait_s": wait,
        "throttled_s": throttled,
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
        (  # other work busy: how long the sending thread waited for a CPU meanwhile
            _report(0.5, 0.0, 3.0, wait=0.1815),
            ["other work used 50%", "sending thread waited 181.5 ms in all", "--rt-priority"],
        ),
        # the ticks saw no other work, the wait was long and the sends late: said alone
        (_report(0.0, 0.0, 3.0, wait=0.2), ["waited 200.0 ms in all", "--rt-priority 10"]),
        (_report(0.0, 0.0, 0.3, wait=0.2), None),  # waited, but on time: nothing to say
        (_report(0.0, 0.0, 3.0, wait=0.1), None),  # late, a short wait (1%): not the machine
        (  # the cgroup's limit: raise it; real-time priority is not the cure
            _report(0.0, 0.0, 3.0, throttled=0.5),
            [
                "CPU limit of this replay's cgroup (a container's) held it back for 0.50 s of the "
                "run's 10.0 s",
                "a higher CPU limit, or a lower --speed",
            ],
        ),
        (_report(0.0, 0.0, 3.0, throttled=0.001), None),  # a millisecond throttled: nothing
        # the demo's case: ordered sessions at 5x, lag p99 3.3 s of turns waiting for the turn
        # before; the thread waited 155 ms in all: not the machine's lag, nothing to say
        (_report(0.0, 0.0, 3310.0, wait=0.2, sessions="ordered"), None),
        (_report(0.0, 0.0, 3310.0, wait=0.2), None),  # no send waited longer than 0.2 s in all
        (_report(0.0, 0.0, 150.0, wait=0.2), ["waited 200.0 ms", "lag p99 150", "--rt-priority"]),
        (  # busy, said; the order's lag is not put down to it
            _report(0.5, 0.0, 40.0, wait=0.2, sessions="ordered"),
            ["other work used 50%", "waited 200.0 ms"],
        ),
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


def test_a_short_run_says_its_throttling_not_its_shares() -> None:
    """The ticks say nothing of half a second; the cgroup's throttled time is exact."""
    report = _report(0.9, 0.0, 0.2, throttled=0.3)
    report["run"]["machine"]["span_s"] = 0.5
    note = machine_note(report)
    assert note is not None
    assert "held it back for 0.30 s of the run's 0.5 s" in note
    assert "other work" not in note


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
    """Without the processes: the record is there, each figure within what the span holds."""
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
    assert set(use) == {
        "cpus",
        "span_s",
        "busy_s",
        "loadtape_s",
        "steal_s",
        "sender_wait_s",
        "throttled_s",
    }
    if Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").exists():
        assert use["sender_wait_s"] is not None and 0 <= use["sender_wait_s"] < use["span_s"]
    assert use["span_s"] >= 1.1
    # not loadtape_s <= busy_s: on this VM the machine's idle and stolen time came out once in
    # about forty such runs as all of the span (busy 0.0 against the replay's own 0.11 s)
    assert use["loadtape_s"] > 0 and 0 <= use["busy_s"] <= use["cpus"] * use["span_s"]


def _limited_cgroup(name: str, share: float) -> tuple[Path, Path] | None:
    """A cgroup of the cpu controller limited to `share` of a CPU, made for the test (root:
    cgroup v1's cpu hierarchy or v2 with the cpu controller on); (it, its procs file) or None."""
    period = 100_000
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            group = v1 / name
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(int(share * period)))
        elif "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
            group = v2 / name
            group.mkdir()
            (group / "cpu.max").write_text(f"{int(share * period)} {period}")
        else:
            return None
    except OSError:
        return None
    return group, group / "cgroup.procs"


def test_a_replay_held_back_by_its_cgroups_cpu_limit_says_so(tmp_path: Path) -> None:
    """A real replay in a cgroup limited to 15% of a CPU (2000 GETs at 1000/s against the mock
    gateway, outside the group): throttled, its run.json says for how long, and its report says
    what to do; the sending thread's wait is there too."""
    made = _limited_cgroup(f"loadtape-test-{os.getpid()}", 0.15)
    if made is None:
        pytest.skip("no cpu cgroup this test may make (needs root)")
    group, procs = made
    cap = write_capture(
        tmp_path / "cap",
        [http_record(start_ns=T0_NS + i * 1_000_000, path="/echo/x") for i in range(2000)],
    )
    try:
        with running_gateway(default_profile="instant") as gw:
            p = subprocess.run(
                [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(tmp_path / "run")],
                capture_output=True,
                text=True,
                timeout=120,
                preexec_fn=lambda: procs.write_text(str(os.getpid())),
            )
    finally:
        group.rmdir()
    assert p.returncode == 0, p.stderr
    use = json.loads((tmp_path / "run" / "run.json").read_text())["machine"]
    assert use["throttled_s"] >= hostcpu.THROTTLED_S
    assert use["throttled_s"] < use["span_s"]
    assert "CPU limit of this replay's cgroup (a container's) held it back" in p.stdout


def test_workers_on_several_machines_keep_their_records_apart() -> None:
    """Ray's workers may run on several hosts: their machines are not one."""
    use = {"cpus": 2, "span_s": 5.0, "busy_s": 6.0, "loadtape_s": 1.0, "steal_s": 0.0}
    same = [{"host": "a", "machine": use}, {"host": "a", "machine": use}]
    merged = merged_machine(same)
    assert merged is not None and merged["loadtape_s"] == 2.0
    assert merged_machine([{"host": "a", "machine": use}, {"host": "b", "machine": use}]) is None
    assert merged_machine([{"host": "a", "machine": None}]) is None  # not Linux


def test_the_live_figures_are_read_afresh_since_the_start() -> None:
    start = CpuSample(2, 0.0, 1.0, 0.0, 0.0, 0.5, 2.0)
    files = {
        "/proc/self/task/9/schedstat": "1 750000000 3",
        "/proc/self/cgroup": "0::/g\n",
        "/sys/fs/cgroup/g/cpu.stat": "throttled_usec 2500000\n",
    }
    assert since(start, [9], read=lambda p: files.get(p)) == (0.25, 0.5)
    assert since(None, [9], read=lambda p: files.get(p)) == (None, None)
    assert since(start, [9], read=lambda p: None) == (None, None)


def _progress(wait: float | None, throttled: float | None) -> Progress:
    return Progress(
        elapsed_s=1.0,
        scheduled_s=1.0,
        planned=10,
        planned_approx=False,
        planned_end_s=None,
        sent=5,
        ok=5,
        expected=0,
        failed=0,
        in_flight=0,
        rate=5.0,
        p99_ms=None,
        lag_p99_ms=None,
        sender_wait_s=wait,
        throttled_s=throttled,
    )


def test_workers_progress_adds_their_waits_and_shares_the_cgroup() -> None:
    got = sum_progress({0: _progress(0.25, 0.5), 1: _progress(0.5, 0.75)}, time.monotonic())
    assert (got.sender_wait_s, got.throttled_s) == (0.75, 0.75)
    unknown = sum_progress({0: _progress(None, None), 1: _progress(None, None)}, time.monotonic())
    assert (unknown.sender_wait_s, unknown.throttled_s) == (None, None)


def test_a_sweeps_live_counters_carry_on_across_its_levels() -> None:
    """Each level's run counts from 0; the live counters go on from the last level's end."""
    obs = RunObserver()
    obs.progress(_progress(0.25, 0.0))
    obs.next_stage(level="2")
    obs.progress(_progress(0.5, None))
    _, p, _ = obs.snapshot()
    assert p is not None and (p.sender_wait_s, p.throttled_s) == (0.75, 0.0)


def test_idle_counts_that_jump_keep_busy_within_the_span() -> None:
    """The kernel's idle can come out above the span (busy 0) or go back (busy clamped to the
    span's CPU time): other work is never made more than the span holds."""
    over = machine_use(_s(0, 100, 0, 0), _s(1, 103, 0, 0.1))
    back = machine_use(_s(0, 100, 0, 0), _s(1, 99, 0, 0.1))
    assert over is not None and back is not None
    assert (over["busy_s"], back["busy_s"]) == (0.0, 2.0)
