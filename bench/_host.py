"""What the host took from this VM while a bench ran: the steal time in /proc/stat (time the
vCPUs were ready to run and the host ran something else). On a shared VM a run with seconds of
steal is not comparable with one without, and the benches print it beside their figures. And
the C floors the benches run beside loadtape, built with the machine's compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def build_c(source: str, work: Path) -> Path | None:
    """bench/`source` built with the machine's C compiler into `work`; None: there is none."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print(f"(no C compiler: {source} is skipped)", flush=True)
        return None
    binary = work / Path(source).stem
    subprocess.run([cc, "-O2", "-o", str(binary), str(BENCH / source)], check=True)
    return binary


def steal_s() -> float:
    """The machine's steal time so far, in seconds, summed over its vCPUs (0 where unknown)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0.0
    if len(fields) < 9 or fields[0] != "cpu":
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


class HostWatch:
    """Steal since this was made."""

    def __init__(self) -> None:
        self.start = steal_s()

    def steal(self) -> float:
        return round(steal_s() - self.start, 2)

    def line(self) -> str:
        return (
            f"host steal during the bench: {self.steal():.1f} s (vCPU time the host took; "
            "figures from runs with seconds of it are not comparable with quiet ones)"
        )
