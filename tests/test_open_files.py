"""A replay that runs out of file descriptors: each request in flight holds a connection. A run
raises its soft open-file limit to the hard one; past the hard one, the requests that could not
get a connection fail with the error kind `client` (this machine's doing, not the target's),
and the run exits 1 with one line saying so, its results kept. Before, the lazy import of a
module while classifying the first such failure needed a descriptor too: exit 3."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from clierrors import one_line

from captures.testing import T0_NS, chat_record, write_capture
from replay.mock.threaded import running_gateway
from replay.send.outcome import classify

CLI = [sys.executable, "-c", "import cli; cli.main()"]


def _replay(tmp: Path, client: str, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    # 200 requests due within 2 ms, each answered after ~0.2 s: all in flight at once
    recs = [chat_record(start_ns=T0_NS + i * 10_000, model="small") for i in range(200)]
    cap = write_capture(tmp / "cap", recs)
    with running_gateway() as gw:
        return subprocess.run(
            [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(tmp / "o"),
             "--client", client, "-q"],
            capture_output=True, text=True, timeout=120,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        )  # fmt: skip


def test_out_of_descriptors_is_a_client_error_not_the_targets() -> None:
    kind, msg = classify(OSError(24, "Too many open files"))
    assert kind == "client" and "ulimit -n" in msg
    assert classify(OSError(99, "Cannot assign requested address"))[0] == "client"  # no port
    assert classify(ConnectionRefusedError(111, "refused"))[0] == "connect"


@pytest.mark.parametrize("client", ["auto", "fast"])
def test_a_run_past_the_open_file_limit_exits_1_saying_so(tmp_path: Path, client: str) -> None:
    p = _replay(tmp_path, client, 64, 64)
    line = one_line(p, 1)
    assert "failed on this machine" in line and "ulimit -n" in line, line
    kinds = Counter(pq.read_table(tmp_path / "o" / "results.parquet")["error_kind"].to_pylist())
    assert kinds[None] > 0 and kinds["client"] > 0 and set(kinds) == {None, "client"}, kinds


def test_a_low_soft_limit_is_raised_for_the_run(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"the hard open-file limit here is {hard}")
    p = _replay(tmp_path, "auto", 64, hard)
    assert p.returncode == 0, p.stderr[-2000:]
    kinds = Counter(pq.read_table(tmp_path / "o" / "results.parquet")["error_kind"].to_pylist())
    assert kinds == {None: 200}, kinds
