"""The machine's CPUs over a run: how much of them the replay used, how much other work took (the
target among it, when it runs on the same machine), and how much the host took from a VM
(steal). A sender that shares its CPUs with busy work sends late at times: against LiteLLM on
the same two cores, the proxy busy with one core's worth of work, 7% of bursts began 0.5-2.8 ms
late, and 1% with `--rt-priority 10` (docs/performance.md). The report says when other work was
busy and the sends were late, with that cure.

Linux only (/proc/stat); elsewhere nothing is recorded. The figures are seconds of CPU (all
CPUs together) over the run's span, from the kernel's tick counts (10 ms on most kernels): a
run shorter than MIN_SPAN_S says nothing of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MIN_SPAN_S = 1.0
# Other work took at least this share of the machine's CPUs: the report says so.
BUSY_SHARE = 0.25
# The host took at least this share of the VM's CPU time: the report says so.
STEAL_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class CpuSample:
    cpus: int
    busy_s: float  # every CPU's busy time since boot: user, nice, system, irq, softirq
    total_s: float  # every CPU's time since boot, idle, iowait and steal included
    steal_s: float  # time the host ran something else on this VM's vCPUs
    own_s: float  # this process's CPU time, all its threads


def read_stat(text: str, tick_s: float) -> tuple[int, float, float, float] | None:
    """(CPUs, busy s, total s, steal s) from /proc/stat's text; None if it has no cpu line."""
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
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    f = (total + [0] * 8)[:8]
    busy = f[0] + f[1] + f[2] + f[5] + f[6]
    return max(cpus, 1), busy * tick_s, sum(f) * tick_s, f[7] * tick_s


def _proc_stat() -> str | None:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            return fh.read()
    except OSError:
        return None


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


def sample(
    read: Callable[[], str | None] = _proc_stat, own: Callable[[], float] = _own_s
) -> CpuSample | None:
    """The machine's CPU counters now; None where there is no /proc/stat."""
    text = read()
    if text is None:
        return None
    try:
        tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return None
    stat = read_stat(text, tick_s)
    if stat is None:
        return None
    cpus, busy, total, steal = stat
    return CpuSample(cpus, busy, total, steal, own())


def machine_use(a: CpuSample | None, b: CpuSample | None) -> dict[str, Any] | None:
    """What run.json records of the span from `a` to `b`: seconds of CPU, all CPUs together."""
    if a is None or b is None or b.total_s <= a.total_s:
        return None
    return {
        "cpus": b.cpus,
        "span_s": round((b.total_s - a.total_s) / b.cpus, 3),
        "busy_s": round(b.busy_s - a.busy_s, 3),
        "loadtape_s": round(b.own_s - a.own_s, 3),
        "steal_s": round(b.steal_s - a.steal_s, 3),
    }


def merged_use(uses: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The workers' records as one: they ran over the same span on the same machine (the busy
    time is each one's view of the whole machine, the replay's own is theirs together)."""
    if not uses:
        return None
    return {
        "cpus": max(u["cpus"] for u in uses),
        "span_s": max(u["span_s"] for u in uses),
        "busy_s": max(u["busy_s"] for u in uses),
        "loadtape_s": round(sum(u["loadtape_s"] for u in uses), 3),
        "steal_s": max(u["steal_s"] for u in uses),
    }


def shares(use: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(other work's share of the machine's CPUs, the host's steal share) over the run; None for
    a run too short to say."""
    if not use or use.get("span_s", 0) < MIN_SPAN_S:
        return None
    capacity = use["cpus"] * use["span_s"]
    others = max(0.0, use["busy_s"] - use["loadtape_s"]) / capacity
    return min(others, 1.0), min(use["steal_s"] / capacity, 1.0)
