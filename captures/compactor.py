"""Compaction of sealed journal segments away from the writer's thread.

Turning a segment into a Parquet part costs more CPU than journaling it (decode, build Arrow
columns, compress). Inside a proxy that CPU would be taken, GIL and all, from the proxy itself, so
the writer can hand sealed segments to a child process (`python -m captures.compactor DIR`): one
line of JSON per segment on its stdin, one line of JSON per result on its stdout. The segment on
disk is the durable copy throughout; if the child cannot start or dies, the writer compacts what
is left itself (inline), and if everything dies, recovery on the next open does it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import compaction, store


@dataclass
class Result:
    segment: int
    ok: bool
    notes: list[str] = field(default_factory=list)
    error: str = ""
    rejected: int = 0


class ProcessCompactor:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.in_flight: dict[int, store.SegmentFile] = {}
        self._results: queue.Queue[Result | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "captures.compactor", str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name="compactor-results", daemon=True
        )
        self._reader.start()
        self.dead = False

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                obj = json.loads(line)
                self._results.put(
                    Result(
                        int(obj["segment"]),
                        bool(obj["ok"]),
                        obj.get("notes", []),
                        obj.get("error", ""),
                        int(obj.get("rejected", 0)),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue
        self._results.put(None)  # end of stream: the child exited

    def submit(self, seg: store.SegmentFile) -> bool:
        """Hand a sealed segment over. False if the child is gone (compact it inline instead)."""
        if self.dead or self.proc.stdin is None:
            return False
        line = json.dumps({"path": str(seg.path), "writer": seg.writer_id, "segment": seg.segment})
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.dead = True
            return False
        self.in_flight[seg.segment] = seg
        return True

    def poll(self) -> list[Result]:
        out = []
        while True:
            try:
                r = self._results.get_nowait()
            except queue.Empty:
                break
            if r is None:
                self.dead = True
                continue
            self.in_flight.pop(r.segment, None)
            out.append(r)
        return out

    def orphans(self) -> list[store.SegmentFile]:
        """Segments handed over without a result, once the child is dead."""
        if not self.dead:
            return []
        segs = list(self.in_flight.values())
        self.in_flight.clear()
        return segs

    def close(self, timeout: float = 120.0) -> None:
        """Let the child finish what it was given; `poll()` then returns the last results."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.dead = True


def serve(root: Path, lines: IO[str], out: IO[str]) -> None:
    for line in lines:
        try:
            req: dict[str, Any] = json.loads(line)
            seg = store.SegmentFile(Path(req["path"]), str(req["writer"]), int(req["segment"]))
        except (ValueError, KeyError, TypeError):
            continue
        try:
            done = compaction.compact_segment(root, seg)
            res = {
                "segment": seg.segment,
                "ok": True,
                "notes": done.notes,
                "rejected": done.rejected,
            }
        except Exception as exc:  # reported to the writer, which retries inline
            res = {"segment": seg.segment, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(res) + "\n")
        out.flush()


if __name__ == "__main__":
    gc.disable()  # a dedicated process whose decoded rows hold no cycles
    serve(Path(sys.argv[1]), sys.stdin, sys.stdout)
