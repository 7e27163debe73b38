"""Real-time scheduling for the sending loop's thread (`--rt-priority N`).

On a machine shared with the target or with other work, a send due now waits for whatever the
kernel runs instead: the target woken by our own previous write, a CPU-bound neighbour. Measured
with bench/replay_bursts.py (bursts of 32 due at once, on the wire, four runs each), the loop at
SCHED_FIFO priority 10 against normal scheduling: beside a CPU-bound process p99 0.53-1.0 ms
against 1.4-5.3 ms; on a quiet machine p99 0.67-0.82 against 1.07-1.10 ms (docs/performance.md).
It does not stop a thread of ours that holds the GIL from holding the loop.

Only the thread that sends is raised (the event loop's, or with the compiled sender its
engine's), and only while it sends: the plan and results threads keep their normal (lowered)
priority, threads started meanwhile start normal (SCHED_RESET_ON_FORK), and the report is
written at normal priority. The kernel keeps 5% of
each second for normal work (sched_rt_runtime_us), so a loop that runs flat out cannot freeze a
machine of two or more cores; on a single core it would starve a target beside it, so that
is refused.

Linux only; the kernel lets root or a process with CAP_SYS_NICE (or an RLIMIT_RTPRIO as high)
ask for it. A refusal is the user's to fix, said before any traffic (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from captures.errors import UserError

MAX_PRIORITY = 99


def check(priority: int) -> None:
    """Raise UserError unless this process may run a thread at SCHED_FIFO `priority` (tried
    on the calling thread and undone at once)."""
    if not 1 <= priority <= MAX_PRIORITY:
        raise UserError(f"--rt-priority {priority}: want 1 to {MAX_PRIORITY} (0: off)")
    if (os.cpu_count() or 1) < 2:
        raise UserError(
            "--rt-priority: this machine has one CPU; a real-time sender would starve the "
            "rest of it (the target too, if it runs here)"
        )
    with realtime(priority):
        pass


@contextlib.contextmanager
def realtime(priority: int, tid: int = 0) -> Iterator[None]:
    """The calling thread (or the thread `tid`: the compiled sender's engine, which does the
    sends) at SCHED_FIFO `priority` for the block (0: unchanged)."""
    if not priority:
        yield
        return
    try:
        policy, param = os.sched_getscheduler(tid), os.sched_getparam(tid)
        os.sched_setscheduler(tid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except AttributeError:
        raise UserError("--rt-priority: this platform has no SCHED_FIFO (Linux only)") from None
    except OSError as exc:
        raise UserError(
            f"--rt-priority {priority}: the kernel refused SCHED_FIFO ({exc.strerror}); it "
            "needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO of at least that (ulimit -r)"
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, policy, param)


@contextlib.contextmanager
def stepped_back(niceness: int) -> Iterator[None]:
    """The calling thread `niceness` lower for the block, where it can be raised again after
    (root, or an RLIMIT_NICE that allows it); else unchanged. The event loop's thread while the
    compiled sender's thread sends: on a shared CPU the sends come first (replay/ahead.py has
    the figures). A thread stuck lower after the run would hold back the next run in the same
    process, so it is only done where it can be undone."""
    try:
        import resource

        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
        undoable = os.geteuid() == 0 or soft == resource.RLIM_INFINITY or 20 - soft <= before
        if undoable:
            os.setpriority(os.PRIO_PROCESS, tid, before + niceness)
    except (OSError, AttributeError, ImportError):
        undoable = False
    try:
        yield
    finally:
        if undoable:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, before)
