"""The machine's CPUs over a run: how much of them the replay used, how much other work took (the
target among it, when it runs on the same machine), how much the host took from a VM (steal),
how long the sending thread waited for a CPU while it had work, and how long the CPU limit of
the replay's cgroup (a container's) held it back. A sender that shares its CPUs with busy work
sends late at times: against LiteLLM on the same two cores, the proxy busy with one core's worth
of work, 8% of bursts began 0.5-3.3 ms late, and 2% with `--rt-priority 10`
(docs/performance.md). The report says when other work was busy or the limit throttled the
replay, and, where the sends were late, the cure.

Linux only (/proc/stat, /proc/self/task/TID/schedstat, the cgroup's cpu.stat); elsewhere
nothing is recorded, and each part missing here is left out. The machine's figures are seconds
of CPU (all CPUs together) over the run's span, busy being what was neither idle nor stolen
(the kernel counts in ticks of 10 ms on most kernels): a run shorter than MIN_SPAN_S says
nothing of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIN_SPAN_S = 1.0
# Other work took at least this share of the machine's CPUs: the report says so.
BUSY_SHARE = 0.25
# The host took at least this share of the VM's CPU time: the report says so.
STEAL_SHARE = 0.05
# The cgroup's CPU limit held the replay back at least this long: the report says so.
THROTTLED_S = 0.01
# The sending thread waited for a CPU at least this share of the run, and the sends were late:
# the report says so, though no other work took a quarter of the CPUs (the replay's own
# threads, or a little other work at the wrong moments, can keep it waiting too).
WAIT_SHARE = 0.02

Read = Callable[[str], "str | None"]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class CpuSample:
    cpus: int
    wall_s: float  # the monotonic clock
    idle_s: float  # every CPU's idle time since boot, iowait included
    steal_s: float  # time the host ran something else on this VM's vCPUs
    own_s: float  # this process's CPU time, all its threads
    sender_wait_s: float | None = None  # the sending threads' time runnable, not running
    throttled_s: float | None = None  # the cgroup's time held back by its CPU limit


def read_stat(text: str, tick_s: float) -> tuple[int, float, float] | None:
    """(CPUs, idle s, steal s) from /proc/stat's text; None if it has no cpu line. The busy
    fields (user, system, ...) are not used: they are the kernel's ticks, which on a tickless
    kernel miss much of the work done in short wakeups (a replay at 10k req/s: 2.7 s busy by
    them against 4.0 s of its own CPU); idle time is kept exactly."""
    total: list[int] | None = None
    cpus = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name == "cpu":
            total = [int(v) for v in rest.split()]
        elif name.startswith("cpu") and name[3:].isdigit():
            cpus += 1
    if total is None or len(total) < 4:
        return None
    # user nice system idle iowait irq softirq steal
    f = (total + [0] * 8)[:8]
    return max(cpus, 1), (f[3] + f[4]) * tick_s, f[7] * tick_s


def waited_s(tids: Sequence[int], read: Read = _read) -> float | None:
    """How long the threads `tids` of this process have been runnable and not running (the
    second figure of their schedstat, ns), together; None where the kernel does not say."""
    total = 0
    for tid in tids:
        text = read(f"/proc/self/task/{tid}/schedstat")
        fields = text.split() if text else []
        if len(fields) < 2 or not fields[1].isdigit():
            return None
        total += int(fields[1])
    return total / 1e9


def throttled_s(read: Read = _read) -> float | None:
    """How long this process's cgroup has been held back by its CPU limit: cgroup v2's
    cpu.stat `throttled_usec`, or v1's `throttled_time` (ns) in the cpu controller's
    hierarchy; None where neither is found (no limit set still reads 0)."""
    groups = read("/proc/self/cgroup")
    if groups is None:
        return None
    for line in groups.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2
            stat, key, scale = f"/sys/fs/cgroup{path}/cpu.stat", "throttled_usec", 1e6
        elif "cpu" in controllers.split(","):  # v1
            mount = ",".join(c for c in controllers.split(",") if c in ("cpu", "cpuacct"))
            stat, key, scale = f"/sys/fs/cgroup/{mount}{path}/cpu.stat", "throttled_time", 1e9
        else:
            continue
        text = read(stat.replace("//", "/"))
        for row in (text or "").splitlines():
            name, _, value = row.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value) / scale
    return None


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


def sample(
    senders: Sequence[int] = (),
    read: Read = _read,
    own: Callable[[], float] = _own_s,
    clock: Callable[[], float] = time.monotonic,
) -> CpuSample | None:
    """The machine's CPU counters now, with the wait of the sending threads `senders` (kernel
    thread ids of this process) and the cgroup's throttled time; None without /proc/stat."""
    text = read("/proc/stat")
    if text is None:
        return None
    try:
        tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return None
    stat = read_stat(text, tick_s)
    if stat is None:
        return None
    cpus, idle, steal = stat
    return CpuSample(cpus, clock(), idle, steal, own(), *_waits(senders, read))


def _waits(senders: Sequence[int], read: Read) -> tuple[float | None, float | None]:
    """(the sending threads' wait, the cgroup's throttled time) now: the parts of a sample the
    live metrics read again."""
    return (waited_s(senders, read) if senders else None), throttled_s(read)


def _less(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else round(max(b - a, 0.0), 4)


def since(
    start: CpuSample | None, senders: Sequence[int], read: Read = _read
) -> tuple[float | None, float | None]:
    """The sending threads' wait for a CPU and the cgroup's throttled time since `start`, read
    afresh (for the live metrics: the two cheap parts of a sample)."""
    if start is None:
        return None, None
    wait, throttled = _waits(senders, read)
    return _less(wait, start.sender_wait_s), _less(throttled, start.throttled_s)


def machine_use(a: CpuSample | None, b: CpuSample | None) -> dict[str, Any] | None:
    """What run.json records of the span from `a` to `b`: seconds of CPU, all CPUs together;
    the sending threads' wait and the cgroup's throttled time (null where not known)."""
    if a is None or b is None or b.wall_s <= a.wall_s:
        return None
    span = b.wall_s - a.wall_s
    idle = (b.idle_s - a.idle_s) + (b.steal_s - a.steal_s)
    return {
        "cpus": b.cpus,
        "span_s": round(span, 3),
        # within the span's CPU time: the kernel's idle counts can jump (seen once on this VM
        # in about forty 1 s runs: the whole span idle or stolen, busy 0 against the
        # replay's own 0.11 s); other work is then seen as none, never as more than it was
        "busy_s": round(min(max(b.cpus * span - idle, 0.0), b.cpus * span), 3),
        "loadtape_s": round(b.own_s - a.own_s, 3),
        "steal_s": round(b.steal_s - a.steal_s, 3),
        "sender_wait_s": _less(b.sender_wait_s, a.sender_wait_s),
        "throttled_s": _less(b.throttled_s, a.throttled_s),
    }


def most(values: Iterable[Any]) -> Any:
    """The largest of the values known (None: none is)."""
    known = [v for v in values if v is not None]
    return max(known) if known else None


def summed(values: Iterable[Any]) -> Any:
    """The sum of the values known (None: none is)."""
    known = [v for v in values if v is not None]
    return round(sum(known), 4) if known else None


def _most(uses: list[Mapping[str, Any]], key: str) -> Any:
    return most(u.get(key) for u in uses)


def _sum(uses: list[Mapping[str, Any]], key: str) -> Any:
    return summed(u.get(key) for u in uses)


def merged_use(uses: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The workers' records as one: they ran over the same span on the same machine (the busy
    time is each one's view of the whole machine; the replay's own time and its senders' wait
    are theirs together; the cgroup, where they share one, each one's view of it)."""
    if not uses:
        return None
    return {
        "cpus": _most(uses, "cpus"),
        "span_s": _most(uses, "span_s"),
        "busy_s": _most(uses, "busy_s"),
        "loadtape_s": _sum(uses, "loadtape_s"),
        "steal_s": _most(uses, "steal_s"),
        "sender_wait_s": _sum(uses, "sender_wait_s"),
        "throttled_s": _most(uses, "throttled_s"),
    }


def shares(use: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(other work's share of the machine's CPUs, the host's steal share) over the run; None for
    a run too short to say."""
    if not use or use.get("span_s", 0) < MIN_SPAN_S:
        return None
    capacity = use["cpus"] * use["span_s"]
    others = max(0.0, use["busy_s"] - use["loadtape_s"]) / capacity
    return min(others, 1.0), min(use["steal_s"] / capacity, 1.0)
