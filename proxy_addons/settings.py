"""The capture sink's settings and counters: light, shared by the proxy side (feed.py), the
in-process sink (sink.py) and the worker process (worker.py)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from captures.snapshot import Snapshot


@dataclass
class SinkConfig:
    """Everything needed to build a CaptureSink, in a form that crosses a process boundary."""

    directory: str
    key_file: str
    redact: bool
    extra_headers: list[str]
    extra_query: list[str]
    extra_json_keys: list[str]
    session_sources: list[list[str]]
    body_limit: int
    queue_records: int
    queue_bytes: int
    flush_interval: float
    on_error: str
    status_file: str | None
    worker_nice: int = 10


@dataclass
class Stats:
    records: int = 0
    streamed: int = 0
    errors: int = 0
    dropped: int = 0  # queue full: never reached the writer
    lost: int = 0  # reached the writer, refused by the disk
    filtered: int = 0
    bytes: int = 0
    not_replayable: int = 0
    write_error: str | None = None
    writer_notes: list[str] = field(default_factory=list)
    writer_cpu_s: float = 0.0  # CPU time the writer thread used (what recording costs the proxy)


class SnapshotQueue:
    """Snapshots waiting for the writer, bounded by count and by bytes: the proxy's queue to its
    worker (feed.py) and a sink's to its writer thread (sink.py). One thread pushes and one
    takes; deque operations are atomic and each byte count has one writer."""

    def __init__(self, records: int, nbytes: int) -> None:
        self.records = records
        self.nbytes = nbytes
        self._dq: collections.deque[Snapshot] = collections.deque()
        self._in = 0  # bytes pushed: the pushing thread's
        self._out = 0  # bytes taken: the taking thread's

    def __len__(self) -> int:
        return len(self._dq)

    def room(self, n: int) -> bool:
        return len(self._dq) < self.records and self._in - self._out + n <= self.nbytes

    def push(self, snap: Snapshot) -> bool:
        """Queue a snapshot if there is room for it; False if not (the caller counts drops)."""
        n = snap.nbytes()
        if not self.room(n):
            return False
        self._dq.append(snap)
        self._in += n
        return True

    def take(self, most: int) -> list[Snapshot]:
        batch = [self._dq.popleft() for _ in range(min(len(self._dq), most))]
        self._out += sum(s.nbytes() for s in batch)
        return batch
