"""--rt-priority: the sending loop's thread at SCHED_FIFO while it sends, and nothing else; a
refusal by the kernel is one line and exit 2 before any traffic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from clierrors import one_line

from captures.errors import UserError
from captures.testing import T0_NS, http_record, write_capture
from replay import priority
from replay.decide.report import build
from replay.decide.report.text import render_text
from replay.measure.resultsdir import Results
from replay.mock.threaded import running_gateway

CLI = [sys.executable, "-c", "import cli; cli.main()"]
ROOT = Path(__file__).resolve().parents[1]


def _permitted() -> bool:
    try:
        priority.check(1)
    except UserError:
        return False
    return True


needs_rt = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _permitted(),
    reason="this process may not use SCHED_FIFO",
)


def _policy(tid: int = 0) -> int:
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK


@needs_rt
def test_only_the_calling_thread_is_raised_and_only_for_the_block() -> None:
    seen: dict[str, int] = {}
    ready, go = threading.Event(), threading.Event()

    def before() -> None:  # a thread already running (the plan and results threads)
        ready.set()
        go.wait(10)
        seen["before"] = _policy()

    def started_inside() -> None:
        seen["inside"] = _policy()

    t = threading.Thread(target=before)
    t.start()
    ready.wait(10)
    with priority.realtime(7):
        assert _policy() == os.SCHED_FIFO
        assert os.sched_getparam(0).sched_priority == 7
        go.set()
        t.join(10)
        u = threading.Thread(target=started_inside)  # SCHED_RESET_ON_FORK: starts normal
        u.start()
        u.join(10)
    assert _policy() == os.SCHED_OTHER  # restored
    assert seen == {"before": os.SCHED_OTHER, "inside": os.SCHED_OTHER}


def test_off_changes_nothing() -> None:
    before = os.sched_getscheduler(0)
    with priority.realtime(0):
        assert os.sched_getscheduler(0) == before


def test_a_refusal_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with pytest.raises(UserError, match=r"refused SCHED_FIFO .*CAP_SYS_NICE"):
        priority.check(5)


def test_one_cpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    with pytest.raises(UserError, match="one CPU"):
        priority.check(5)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_a_user_the_kernel_refuses_gets_one_line_and_exit_2() -> None:
    """As nobody, without capabilities: the kernel's own refusal, before any traffic."""
    shared = Path(tempfile.mkdtemp(prefix="loadtape-rt-"))  # pytest's tmp_path is root's own
    try:
        cap = write_capture(shared / "cap", [http_record(start_ns=T0_NS)])
        for f in [shared, *shared.rglob("*")]:
            f.chmod(0o755 if f.is_dir() else 0o644)
        p = _as_nobody(cap)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert "refused SCHED_FIFO" in one_line(p, 2)
    assert not Path("/tmp/loadtape-never-written").exists()


def _as_nobody(cap: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         "--bounding-set=-all", *CLI, "replay", str(cap), "--target", "http://127.0.0.1:9",
         "--out", "/tmp/loadtape-never-written", "--rt-priority", "5"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize("value", ["100", "-1"])
def test_a_priority_out_of_range_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    cap = write_capture(tmp_path / "cap", [http_record(start_ns=T0_NS)])
    p = subprocess.run(
        [*CLI, "replay", str(cap), "--target", "http://127.0.0.1:9", "--rt-priority", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--rt-priority" in one_line(p, 2)


@needs_rt
def test_a_real_time_replay_sends_everything_and_the_report_says_so(tmp_path: Path) -> None:
    cap = write_capture(
        tmp_path / "cap",
        [http_record(start_ns=T0_NS + i * 200_000, path="/echo/x") for i in range(100)],
    )
    out = tmp_path / "run"
    with running_gateway(default_profile="instant") as gw:
        p = subprocess.run(
            [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(out), "-q",
             "--rt-priority", "3"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads((out / "run.json").read_text())
    assert doc["counts"]["sent"] == 100 and doc["counts"]["failed"] == 0
    assert doc["settings"]["rt_priority"] == 3
    report = build(Results.open(out))
    assert report["run"]["rt_priority"] == 3
    assert "SCHED_FIFO priority 3" in render_text(report)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_loop_steps_back_for_the_block_where_it_can_step_up_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the compiled sender's thread sends, the loop's thread is lowered, and raised again
    after; where it could not be raised again (no root, RLIMIT_NICE too low) it is left as is:
    a thread stuck lower would hold back the next run in the process."""
    import resource

    from replay.priority import stepped_back

    if os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_NICE)[0] < 20:
        pytest.skip("raising a thread's priority again needs root or RLIMIT_NICE >= 20")
    before = _nice()
    with stepped_back(5):
        assert _nice() == before + 5
    assert _nice() == before
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (0, 0))
    with stepped_back(5):
        assert _nice() == before  # could not be undone: not done
    assert _nice() == before
