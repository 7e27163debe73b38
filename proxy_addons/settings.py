"""The capture sink's settings and counters: light, shared by the proxy side (feed.py), the
in-process sink (sink.py) and the worker process (worker.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
