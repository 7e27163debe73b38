"""`inspect` shows a capture's stream timing: the gaps between a response's chunks (never
across two responses) and chunks per stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from captures.reader import Capture
from captures.testing import T0_NS, chat_record, write_capture

CLI = [sys.executable, "-c", "import cli; cli.main()"]


def test_chunk_gaps_are_within_each_response(tmp_path: Path) -> None:
    recs = [
        chat_record(start_ns=T0_NS, stream=True, completion_tokens=6, ttft_ms=30, itl_ms=5),
        chat_record(start_ns=T0_NS + 10**9, stream=True, completion_tokens=4, ttft_ms=30,
                    itl_ms=40),
        chat_record(start_ns=T0_NS + 2 * 10**9, stream=False),
    ]  # fmt: skip
    cap = write_capture(tmp_path / "cap", recs)
    want: list[int] = []
    lengths = []
    for r in Capture(cap).records():
        if r["stream"]:
            offs = r["chunk_offsets_us"]
            want += np.diff(offs).tolist()
            lengths.append(len(offs))
    p = subprocess.run([*CLI, "inspect", str(cap), "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    gaps = doc["percentiles"]["chunk_gap_us"]
    assert gaps["p100"] == max(want)  # exact: the max is kept beside the histogram
    assert abs(gaps["p50"] - sorted(want)[len(want) // 2]) <= max(want) * 0.01 + 1
    assert doc["percentiles"]["chunks_per_stream"]["p100"] == max(lengths)
    text = subprocess.run([*CLI, "inspect", str(cap)], capture_output=True, text=True).stdout
    assert "chunk_gap_us" in text and "API surfaces chat (3)" in text, text
