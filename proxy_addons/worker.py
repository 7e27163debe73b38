"""The capture worker: recording work in its own process, off the proxy's GIL.

Measured inside mitmdump, building records (decoding, redaction, LLM parsing) and journaling cost
the proxy about 150 us of CPU per flow on its writer thread, and slowed its event loop about as much
again through GIL contention. So by default the proxy only packs snapshots (msgpack, a few us each)
and writes them to a pipe; this worker process runs the same CaptureSink as the in-process mode
(proxy_addons/sink.py) on the other end.

Proxy side: `WorkerClient` (proxy_addons/feed.py).

Worker side (`python -m proxy_addons.worker CONFIG_JSON`): reads frames until end of input, then
drains, closes the capture (compaction) and exits. It ignores SIGINT, so a Ctrl-C meant for the
proxy does not cut it short; if the proxy is killed, the worker still writes everything that had
reached the pipe.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import IO, Any

import msgpack

from captures import journal
from captures.snapshot import Snapshot

from .settings import SinkConfig
from .sink import build_sink

log = logging.getLogger("loadtape.capture")


# -- worker process ------------------------------------------------------------------------------
def _read_frames(fd: int) -> Any:
    """Yield decoded frames from a pipe until end of input."""
    buf = bytearray()
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= journal.HEAD_SIZE:
            length = int.from_bytes(buf[:4], "little")
            end = journal.HEAD_SIZE + length
            if len(buf) < end:
                break
            payload = bytes(buf[journal.HEAD_SIZE : end])
            del buf[:end]
            yield msgpack.unpackb(payload, raw=False, use_list=False)


def serve(config: SinkConfig, fd: int, status_out: IO[str]) -> int:
    def fatal(reason: str) -> None:
        status_out.write(json.dumps({"fatal": reason}) + "\n")
        status_out.flush()

    sink = build_sink(config, compaction="inline", on_fatal=fatal)

    def report() -> None:
        s = sink.stats
        status_out.write(
            json.dumps(
                {
                    "records": s.records,
                    "streamed": s.streamed,
                    "errors": s.errors,
                    "lost": s.lost,
                    "not_replayable": s.not_replayable,
                    "bytes": s.bytes,
                    "write_error": s.write_error,
                    "writer_cpu_s": s.writer_cpu_s,
                }
            )
            + "\n"
        )
        status_out.flush()

    sink.start()
    last = 0.0
    proxy_dropped = 0
    try:
        for head, snaps in _read_frames(fd):
            proxy_dropped, sink.stats.filtered, sink.inflight, listen = head
            sink.listen = [list(a) for a in listen]
            for fields_ in snaps:
                sink.put(Snapshot(*fields_))  # waits for room: drops are the proxy's to count
            sink.proxy_dropped = proxy_dropped
            now = time.monotonic()
            if now - last >= 0.5:
                report()
                last = now
    finally:
        sink.close()
        report()
    return 0


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the proxy; we stop at EOF
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = SinkConfig(**json.loads(sys.argv[1]))
    # Records can wait (queued, bounded); the proxy's requests cannot. Measured on the 2-core
    # development VM (streamed chat, docs/capture.md): p99 at one connection 0.05-0.28 ms lower
    # in three interleaved comparisons; throughput within the noise.
    os.nice(config.worker_nice)
    try:
        sys.exit(serve(config, sys.stdin.fileno(), sys.stdout))
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
